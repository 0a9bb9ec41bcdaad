"""``prune_model_weight`` for MindSpore: run the steps on a ``.ckpt``, build the Cell's complete parameter dict,
check it against ``cell.parameters_dict()``, then ``mindspore.load_param_into_net(..., strict_load=True)``.

The steps are the framework-free ones of ``msmodelslim.common.prune.transformer_prune`` (renaming, the
original's first-N slices, weight importance on NumPy arrays); this module only reads the file, converts arrays
to Parameters and loads them, undoing the load exactly on any error.
"""
import mindspore

from msmodelslim.common.prune.transformer_prune import leading
from msmodelslim.common.prune.transformer_prune.blocks import rename_blocks
from msmodelslim.common.prune.transformer_prune.entries import initial_entries, read_numpy
from msmodelslim.common.prune.transformer_prune.named_layout import build_named_layout, detect_named_family
from msmodelslim.common.prune.transformer_prune.problems import MAX_LISTED, describe_problems
from msmodelslim.common.prune.transformer_prune.slicing import slice_mismatched
from msmodelslim.common.prune.transformer_prune.weight_importance import apply_weight_importance
from msmodelslim.mindspore.prune.transformer_prune.checkpoint import MindSporeCheckpoint
from msmodelslim.utils.logging import logger

HEAD_SIZE_ATTRS = ("attention_head_size", "head_dim", "head_size")
HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads")


def check_supported(config):
    """Raise ``ValueError`` for what the MindSpore backend does not do yet: activation importance and
    ``layer_id_map="auto"`` (both need calibration runs of the big Cell)."""
    if config.importance == "activation":
        raise ValueError("importance 'activation' is not supported for MindSpore models yet; use 'first' or "
                         "'weight'.")
    if "prune_blocks" in config.prune_state_dict_steps and any(
            params["layer_id_map"] == "auto" for params in config.prune_blocks_params):
        raise ValueError("layer_id_map='auto' is not supported for MindSpore models yet; give the layer map "
                         "explicitly.")


class _MsRun:
    """State of one prune_model_weight call on a Cell."""

    def __init__(self, cell, config, checkpoint):
        self.cell = cell
        self.config = config
        self.checkpoint = checkpoint
        self.targets = cell.parameters_dict()
        self.small_shapes = {k: tuple(p.shape) for k, p in self.targets.items()}
        self.entries = initial_entries(checkpoint)
        self.layouts = []

    def shape(self, key):
        entry = self.entries.get(key)
        return entry.shape(self.checkpoint) if entry is not None else None

    def mismatched(self):
        """``[(key, checkpoint shape, model shape)]`` of the keys both hold, with equal rank, different shape."""
        found = []
        for key in self.entries:
            small = self.small_shapes.get(key)
            big = self.shape(key) if small is not None else None
            if big is not None and big != small and len(big) == len(small):
                found.append((key, big, small))  # a rank difference is reported by the final check
        return found

    def blocks_step(self):
        self.entries = rename_blocks(self.entries, self.config.prune_blocks_params)

    def leading_step(self, fused_keys):
        for key, big, small in self.mismatched():
            if fused_keys and any(q in key for q in fused_keys):
                self.entries[key] = leading.fused_thirds(self.entries[key], key, big, small)
            else:
                self.entries[key] = leading.leading_slice(self.entries[key], big, small)

    def weight_step(self, fused_keys):
        family, layers = detect_named_family(list(self.small_shapes))
        if family is None:
            logger.warning("%s has no recognised transformer blocks: mismatched tensors keep their first "
                           "rows/columns.", type(self.cell).__name__)
            self.leading_step(fused_keys)
            return
        layout = build_named_layout(family, layers, self.small_shapes, self.shape,
                                    lambda prefix: self._head_dim(prefix + family.attention, prefix + family.q))
        apply_weight_importance(layout, lambda key: read_numpy(self.entries[key], self.checkpoint))
        for key, big, small in self.mismatched():
            self.entries[key] = slice_mismatched(
                self.entries[key], key, big, small, lambda axis, key=key: layout.axes.get((key, axis)), fused_keys,
                lambda entry: entry.shape(self.checkpoint))
        self.layouts.append(layout)

    def _head_dim(self, attention_path, q_stem):
        """A layer's head size from its attention sub-cell's attributes, or None."""
        attention = dict(self.cell.cells_and_names()).get(attention_path)
        for attr in HEAD_SIZE_ATTRS:
            value = getattr(attention, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        for attr in HEAD_COUNT_ATTRS:
            value = getattr(attention, attr, None)
            if isinstance(value, int) and value > 0:
                return self.small_shapes[f"{q_stem}.weight"][0] // value
        return None

    def build_params(self):
        """``{name: Parameter}`` for every parameter of the Cell, each of the Cell parameter's dtype; checked
        (names, shapes) before any value is read.

        Raises:
            ValueError: a parameter the checkpoint cannot fill, or a shape conflict (with ``strict``).
        """
        missing, conflicts, plan = [], [], []
        for key, shape in self.small_shapes.items():
            big = self.shape(key)
            if big is None:
                missing.append(key)
            elif big != shape:
                conflicts.append((key, big, shape))
            else:
                plan.append(key)
        if missing or conflicts:
            message = describe_problems(self.checkpoint.path, missing, conflicts)
            if self.config.strict:
                raise ValueError(message + " The Cell was not changed.")
            logger.warning("%s Loading the rest (strict=False).", message)
        params = {}
        for key in plan:
            value = read_numpy(self.entries[key], self.checkpoint)
            tensor = mindspore.Tensor(value, dtype=self.targets[key].dtype)
            params[key] = mindspore.Parameter(tensor, name=key)
        return params

    def report(self):
        """What was kept, in the shape of the PyTorch backend's report."""
        params = self.config.prune_blocks_params
        steps = self.config.prune_state_dict_steps
        layers = dict(sorted(params[0]["layer_id_map"].items())) if params and "prune_blocks" in steps else {}
        report = {"layers": layers, "heads": {}, "ffn": {}, "hidden": None}
        for layout in self.layouts:
            for group in (g for g in layout.heads if g.head_dim):
                report["heads"][layout.layer_of_group[group.name]] = [h for _, hs in group.keep for h in hs]
            for group in layout.ffn:
                report["ffn"][layout.layer_of_group[group.name]] = [group.small, group.big]
            report["hidden"] = [layout.hidden.small, layout.hidden.big]
        return report


def load_restorably(cell, params):
    """``mindspore.load_param_into_net(cell, params, strict_load=True)``, undone exactly on any error
    (KeyboardInterrupt included): every parameter's value is copied first and put back with ``set_data``, so
    the Cell keeps the same Parameter objects. Returns the names of the Cell's parameters left unloaded."""
    targets = cell.parameters_dict()
    backups = {key: targets[key].value().copy() for key in params if key in targets}
    try:
        not_loaded, _ = mindspore.load_param_into_net(cell, params, strict_load=True)
        return not_loaded
    except BaseException:
        for key, value in backups.items():
            targets[key].set_data(value)
        raise


def prune_model_weight_ms(cell, config, path, given=None):
    """Backend of :func:`prune_model_weight` for a MindSpore Cell, on a validated config and an existing, resolved
    ``path`` (``given``: the path as the user wrote it, whose suffix names the format).

    Raises:
        CheckpointError: not a ``.ckpt`` / ``.safetensors`` file, or an empty, truncated or corrupt one.
        ValueError: activation importance or ``layer_id_map="auto"`` (not supported yet); a checkpoint that
            cannot fill the Cell (listing the keys); the steps' own errors. The Cell is unchanged on any error.
    """
    check_supported(config)
    logger.info("Start pruning the weights of %s into %s.", path, type(cell).__name__)
    checkpoint = MindSporeCheckpoint(path, given)
    fused_keys = getattr(config, "qkv_keys", None)
    run = _MsRun(cell, config, checkpoint)
    for step in config.prune_state_dict_steps:
        if step == "prune_blocks":
            run.blocks_step()
            continue
        keys = fused_keys if step == "prune_vit_intra_block" else None
        if config.importance == "first":
            run.leading_step(keys)
        else:
            run.weight_step(keys)
    params = run.build_params()
    report = run.report()
    not_loaded = load_restorably(cell, params)
    config.report = report
    if not_loaded:
        logger.warning("Parameters left at their initial values: %s", ", ".join(not_loaded[:MAX_LISTED]))
    logger.info("Finished pruning the weights into %s.", type(cell).__name__)

