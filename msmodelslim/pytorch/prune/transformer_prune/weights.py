"""``prune_model_weight`` for PyTorch: run the steps on a lazily read checkpoint, build the small model's complete
state dict tensor by tensor (peak memory: the small model plus the largest checkpoint tensor), check it, load it."""
import os

import torch

from msmodelslim.common.prune.transformer_prune import leading
from msmodelslim.common.prune.transformer_prune.blocks import rename_blocks
from msmodelslim.common.prune.transformer_prune.slicing import slice_mismatched
from msmodelslim.common.prune.transformer_prune.entries import initial_entries
from msmodelslim.common.prune.transformer_prune.problems import MAX_LISTED, describe_problems
from msmodelslim.pytorch.prune.structure import detect_family
from msmodelslim.common.prune.transformer_prune.activation_importance import apply_activation_importance
from msmodelslim.common.prune.transformer_prune.weight_importance import apply_weight_importance
from msmodelslim.pytorch.prune.transformer_prune import depth
from msmodelslim.pytorch.prune.transformer_prune.activation import collect_activation_stats
from msmodelslim.pytorch.prune.transformer_prune.layout import build_layout
from msmodelslim.utils.checkpoint import open_checkpoint
from msmodelslim.utils.logging import logger

def read_entry(entry, checkpoint):
    """The entry's tensor, read from the checkpoint and selected (a fresh, contiguous tensor)."""
    tensor = checkpoint.get(entry.source)
    for axis, index in entry.selections:
        tensor = tensor.index_select(axis, torch.as_tensor(index, dtype=torch.long, device=tensor.device))
    return tensor.contiguous() if entry.selections else tensor.clone()


class _Run:
    """State of one prune_model_weight call."""

    def __init__(self, model, config, checkpoint, path):
        self.model = model
        self.config = config
        self.checkpoint = checkpoint
        self.path = path
        self.small_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        self.entries = initial_entries(checkpoint)
        self.layouts = []
        self.blocks_params = config.prune_blocks_params
        self._big_model = self._activation_stats = None

    def shape(self, key):
        entry = self.entries.get(key)
        return entry.shape(self.checkpoint) if entry is not None else None

    def mismatched(self):
        return [k for k in self.entries if k in self.small_shapes and self.shape(k) != self.small_shapes[k]]

    # ---------------------------------------------------------------------------------------- original steps
    def leading_step(self, fused_keys):
        for key in self.mismatched():
            entry, big, small = self.entries[key], self.shape(key), self.small_shapes[key]
            if len(big) != len(small):
                continue  # reported by the final check
            if fused_keys and any(q in key for q in fused_keys):
                self.entries[key] = leading.fused_thirds(entry, key, big, small)
            else:
                self.entries[key] = leading.leading_slice(entry, big, small)

    # ---------------------------------------------------------------------------------------- importance steps
    def importance_step(self, fused_keys):
        family, layers = detect_family(self.model)
        if family is None:
            logger.warning("%s is not a recognised transformer family: mismatched tensors keep their first "
                           "rows/columns.", type(self.model).__name__)
            self.leading_step(fused_keys)
            return
        layout = build_layout(self.model, family, layers, self.shape)
        if self.config.importance == "activation":
            apply_activation_importance(layout, self._stats(), lambda k: self.entries[k].source, self._read)
        else:
            apply_weight_importance(layout, self._read)
        for key in self.mismatched():
            big, small = self.shape(key), self.small_shapes[key]
            if len(big) != len(small):
                continue
            self.entries[key] = slice_mismatched(
                self.entries[key], key, big, small, lambda axis, key=key: layout.axes.get((key, axis)),
                fused_keys, lambda entry: entry.shape(self.checkpoint))
        self.layouts.append(layout)

    def _read(self, key):
        """The checkpoint tensor that becomes ``key``, as a float NumPy array for the framework-free scores."""
        return read_entry(self.entries[key], self.checkpoint).float().numpy()

    def _big(self):
        if self._big_model is None:
            self._big_model = self.config.importance_model or _load_big_model(self.model, self.path)
        return self._big_model

    def _stats(self):
        if self._activation_stats is None:
            self._activation_stats = self._measured(
                "activation", lambda: collect_activation_stats(self._big(), self.config.importance_dataset))
        return self._activation_stats

    def _measured(self, key, measure):
        """``measure()``, reused across calls when the config carries a ``measurement_cache`` dict (set by callers
        that fill many small models from one big model and one dataset, e.g. ``slim_model``'s search)."""
        cache = getattr(self.config, "measurement_cache", None)
        if not isinstance(cache, dict):
            return measure()
        if key not in cache:
            cache[key] = measure()
        return cache[key]

    # ---------------------------------------------------------------------------------------- prune_blocks
    def blocks_step(self):
        """Resolve ``layer_id_map="auto"`` passes (the config itself is left as given), then rename the keys."""
        self.blocks_params = [
            {**params, "layer_id_map": depth.choose_layer_map(
                self.model, lambda pattern=params["pattern"]: self._influence(pattern), params["pattern"])}
            if params["layer_id_map"] == "auto" else params
            for params in self.config.prune_blocks_params]
        self.entries = rename_blocks(self.entries, self.blocks_params)

    def _influence(self, pattern):
        return self._measured(("influence", pattern), lambda: depth.block_influence(
            self._big(), self.config.importance_dataset, pattern))

    # ---------------------------------------------------------------------------------------- final state dict
    def build_state_dict(self):
        """The complete state dict of the small model, checked before anything is read."""
        tied = _tied_keys(self.model)
        missing, conflicts, plan = [], [], {}
        for key, shape in self.small_shapes.items():
            source_key = key if key in self.entries else next((k for k in tied.get(key, ()) if k in self.entries),
                                                               None)
            if source_key is None:
                missing.append(key)
            elif self.shape(source_key) != shape:
                conflicts.append((key, self.shape(source_key), shape))
            else:
                plan[key] = source_key
        if missing or conflicts:
            message = describe_problems(self.path, missing, conflicts)
            if self.config.strict:
                raise ValueError(message + " The model was not changed.")
            logger.warning("%s Loading the rest (strict=False).", message)
        state, cache = {}, {}
        for key, source_key in plan.items():
            if source_key not in cache:
                cache[source_key] = read_entry(self.entries[source_key], self.checkpoint)
            state[key] = cache[source_key]
        self._check_ties(state, tied)
        return state

    def _check_ties(self, state, tied):
        """Refuse (strict) or drop (with a WARNING) checkpoint values that differ for keys the model ties: one
        tensor cannot hold both, and the last one loaded would win silently. The key the model lists first wins."""
        order = {key: index for index, key in enumerate(self.small_shapes)}
        for key, others in tied.items():
            for other in others:
                if (order[key] < order[other] and key in state and other in state
                        and not torch.equal(state[key], state[other])):
                    message = (f"The checkpoint {self.path} holds different values for '{key}' and '{other}', which "
                               "the model ties (one shared tensor).")
                    if self.config.strict:
                        raise ValueError(message + " The model was not changed.")
                    logger.warning("%s The model takes the values of '%s' (strict=False).", message, key)
                    del state[other]

    def report(self):
        """What was kept: ``layers`` {small id: checkpoint id}, per layer ``heads`` (checkpoint head ids) and
        ``ffn`` [kept, of], and ``hidden`` [kept, of]."""
        params = self.blocks_params
        layers = dict(sorted(params[0]["layer_id_map"].items())) if params else {}
        report = {"layers": layers, "heads": {}, "ffn": {}, "hidden": None}
        for layout in self.layouts:
            for group in layout.heads:
                report["heads"][layout.layer_of_group[group.name]] = [h for _, hs in group.keep for h in hs]
            for group in layout.ffn:
                report["ffn"][layout.layer_of_group[group.name]] = [group.small, group.big]
            report["hidden"] = [layout.hidden.small, layout.hidden.big]
        return report


def _tied_keys(model):
    """``{key: [other keys sharing its storage]}`` of the model's state dict (tied embeddings)."""
    by_storage = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        by_storage.setdefault((tensor.data_ptr(), tuple(tensor.shape)), []).append(key)
    return {k: [o for o in keys if o != k] for keys in by_storage.values() if len(keys) > 1 for k in keys}


def _load_big_model(model, path):
    """The big model of a Hugging Face checkpoint directory, of the small model's class."""
    if not (os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))):
        raise ValueError("importance 'activation' and layer_id_map='auto' need the big model: pass "
                         "set_importance(kind, dataset, model=big_model), or give a Hugging Face checkpoint directory "
                         "(with config.json) as weight_file_path.")
    if not hasattr(type(model), "from_pretrained"):
        raise ValueError(f"{type(model).__name__} cannot load {path}: pass the big model to set_importance().")
    logger.info("Loading the big model from %s for activation importance.", path)
    return type(model).from_pretrained(path, dtype=torch.float32).eval()


def prune_model_weight_torch(model, config, path):
    """Backend of :func:`prune_model_weight` on a validated model, config and path."""
    logger.info("Start pruning the weights of %s into %s.", path, type(model).__name__)
    fused_keys = getattr(config, "qkv_keys", None)
    with open_checkpoint(path) as checkpoint:
        run = _Run(model, config, checkpoint, path)
        for step in config.prune_state_dict_steps:
            if step == "prune_blocks":
                run.blocks_step()
                continue
            if step == "prune_vit_intra_block" and fused_keys is None:
                fused_keys = config.get("qkv_keys")  # raises like the original when unset
            keys = fused_keys if step == "prune_vit_intra_block" else None
            if config.importance == "first":
                run.leading_step(keys)
            else:
                run.importance_step(keys)
        state = run.build_state_dict()
        report = run.report()
    result = load_restorably(model, state)
    config.report = report
    _log_report(report, result)
    logger.info("Finished pruning the weights into %s.", type(model).__name__)


def load_restorably(model, state):
    """``model.load_state_dict(state, strict=False)``, undone exactly on any error (KeyboardInterrupt included).

    Each target tensor first gets a fresh storage holding its new value and keeps its old storage until the load
    has succeeded; an error puts every old storage back. Parameter objects (and so tied weights) stay the same,
    and no second copy of the model is made. Returns what ``load_state_dict`` returns.
    """
    targets = model.state_dict(keep_vars=True)
    backups, given = {}, set()
    try:
        for key, value in state.items():
            tensor = targets.get(key)
            if tensor is None or id(tensor) in backups or tensor.shape != value.shape:
                continue
            new = value.detach().to(device=tensor.device, dtype=tensor.dtype).contiguous()
            storage = new.untyped_storage().data_ptr()
            if storage and storage in given:
                new = new.clone()  # two tensors filled from one checkpoint tensor must not share its storage
            given.add(new.untyped_storage().data_ptr())
            backups[id(tensor)] = (tensor, tensor.data)
            tensor.data = new
        return model.load_state_dict(state, strict=False)
    except BaseException:
        for tensor, data in backups.values():
            tensor.data = data
        raise


def _log_report(report, result):
    if report["layers"]:
        logger.info("Layers (model <- checkpoint): %s", ", ".join(f"{k} <- {v}" for k, v in report["layers"].items()))
    for prefix, heads in report["heads"].items():
        kept, total = report["ffn"][prefix]
        logger.info("%s: checkpoint heads kept %s, FFN neurons %d of %d", prefix, heads, kept, total)
    if report["hidden"]:
        logger.info("Hidden channels kept: %d of %d", *report["hidden"])
    if result.missing_keys:
        logger.warning("Parameters left at their initial values: %s", ", ".join(result.missing_keys[:MAX_LISTED]))


