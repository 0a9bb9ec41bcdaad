"""``prune_model_weight`` for MindSpore: run the steps on a ``.ckpt``, build the Cell's complete parameter dict,
check it against ``cell.parameters_dict()``, then ``mindspore.load_param_into_net(..., strict_load=True)``.

The steps are the framework-free ones of ``msmodelslim.common.prune.transformer_prune`` (renaming, the
original's first-N slices, weight and activation importance on NumPy arrays, the auto layer choice); this module
only reads the file, runs the big Cell on the calibration data (``activation.py``), converts arrays to Parameters
and loads them, undoing the load exactly on any error.
"""
import mindspore

from msmodelslim.common.prune.transformer_prune import layer_choice, leading
from msmodelslim.common.prune.transformer_prune.activation_importance import apply_activation_importance
from msmodelslim.common.prune.transformer_prune.blocks import rename_blocks
from msmodelslim.common.prune.transformer_prune.entries import initial_entries, read_numpy
from msmodelslim.common.prune.transformer_prune.problems import MAX_LISTED, describe_problems
from msmodelslim.common.prune.transformer_prune.slicing import slice_mismatched
from msmodelslim.common.prune.transformer_prune.weight_importance import apply_weight_importance
from msmodelslim.common.structure.families import detect_family, module_names
from msmodelslim.common.structure.layout import build_layout, named_axes, named_hidden_candidates
from msmodelslim.mindspore.prune.transformer_prune.activation import calibrate
from msmodelslim.mindspore.prune.transformer_prune.checkpoint import MindSporeCheckpoint
from msmodelslim.utils.logging import logger

HEAD_SIZE_ATTRS = ("attention_head_size", "head_dim", "head_size")
HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads")
AUTO = "auto"
INTRA_STEPS = ("prune_bert_intra_block", "prune_vit_intra_block")


def calibration_needs(config):
    """``(activations, influence)``: whether the steps need activation statistics / block influence of the big
    Cell on the calibration data."""
    steps = config.prune_state_dict_steps
    activations = config.importance == "activation" and any(step in INTRA_STEPS for step in steps)
    influence = "prune_blocks" in steps and any(p["layer_id_map"] == AUTO for p in config.prune_blocks_params)
    return activations, influence


def check_calibration_inputs(config):
    """Raise ``ValueError`` when the steps need calibration runs but the big Cell or the data is missing: unlike
    the PyTorch backend, which can load a Hugging Face directory, a ``.ckpt`` does not say which Cell to build."""
    activations, influence = calibration_needs(config)
    if not (activations or influence):
        return
    what = "importance 'activation'" if activations else "layer_id_map='auto'"
    if config.importance_dataset is None:
        raise ValueError(f"{what} needs calibration data: call set_importance(kind, dataset=[batches], "
                         "model=big_cell).")
    if config.importance_model is None:
        raise ValueError(f"{what} needs the big MindSpore Cell (with the checkpoint's weights) to run the "
                         "calibration data through: call set_importance(kind, dataset, model=big_cell).")


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
        self.blocks_params = config.prune_blocks_params
        self._calibration = None

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

    def calibration(self):
        """The big Cell's statistics on the calibration data, measured once, on first need."""
        if self._calibration is None:
            activations, influence = calibration_needs(self.config)
            self._calibration = calibrate(self.config.importance_model, self.config.importance_dataset,
                                          activations=activations, influence=influence)
        return self._calibration

    def blocks_step(self):
        """Resolve ``layer_id_map="auto"`` passes (the config itself is left as given), then rename the keys."""
        self.blocks_params = [{**params, "layer_id_map": self._auto_layer_map(params["pattern"])}
                              if params["layer_id_map"] == AUTO else params
                              for params in self.config.prune_blocks_params]
        self.entries = rename_blocks(self.entries, self.blocks_params)

    def _auto_layer_map(self, pattern):
        wanted = layer_choice.small_layer_ids(list(self.small_shapes), pattern)
        influence = layer_choice.influence_by_layer(self.calibration().influence, pattern)
        return layer_choice.choose_layer_map(wanted, influence, pattern)

    def leading_step(self, fused_keys):
        for key, big, small in self.mismatched():
            if fused_keys and any(q in key for q in fused_keys):
                self.entries[key] = leading.fused_thirds(self.entries[key], key, big, small)
            else:
                self.entries[key] = leading.leading_slice(self.entries[key], big, small)

    def importance_step(self, fused_keys):
        family, layers = detect_family(module_names(self.small_shapes), self._model_type())
        if family is None:
            logger.warning("%s has no recognised transformer blocks: mismatched tensors keep their first "
                           "rows/columns.", type(self.cell).__name__)
            self.leading_step(fused_keys)
            return
        axes_of = named_axes(family, self.small_shapes)
        layout = build_layout(family, layers, self.small_shapes, self.shape, axes_of,
                              lambda prefix: self._head_dim(prefix + family.attention, axes_of(prefix + family.o, "in")[0]),
                              named_hidden_candidates(family, self.small_shapes))
        if self.config.importance == "activation":
            apply_activation_importance(layout, self.calibration().stats, self._source, self._read)
        else:
            apply_weight_importance(layout, self._read)
        for key, big, small in self.mismatched():
            self.entries[key] = slice_mismatched(
                self.entries[key], key, big, small, lambda axis, key=key: layout.axes.get((key, axis)), fused_keys,
                lambda entry: entry.shape(self.checkpoint))
        self.layouts.append(layout)

    def _read(self, key):
        return read_numpy(self.entries[key], self.checkpoint)

    def _source(self, key):
        return self.entries[key].source

    def _head_dim(self, attention_path, query_axis):
        """A layer's head size from its attention sub-cell's attributes (a size, or a head count dividing the
        query channels at ``query_axis``, the output projection's input), or None."""
        attention = dict(self.cell.cells_and_names()).get(attention_path)
        for attr in HEAD_SIZE_ATTRS:
            value = getattr(attention, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        for attr in HEAD_COUNT_ATTRS:
            value = getattr(attention, attr, None)
            if isinstance(value, int) and value > 0:
                key, axis = query_axis
                return self.small_shapes[key][axis] // value
        return None

    def _model_type(self):
        """The Cell's ``config.model_type`` when it carries a config, else None."""
        model_type = getattr(getattr(self.cell, "config", None), "model_type", None)
        return model_type if isinstance(model_type, str) else None

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
        params = self.blocks_params
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
        ValueError: activation importance or ``layer_id_map="auto"`` without calibration data or without the big
            Cell (``set_importance(kind, dataset, model=big_cell)``); calibration batches without samples; a
            checkpoint that cannot fill the Cell (listing the keys); the steps' own errors.
        TypeError: a calibration batch that is not a Tensor, tuple/list or dict.
        RuntimeError: the big Cell fails on a calibration batch (naming it).
        The Cell, and the big Cell, are unchanged on any error.
    """
    check_calibration_inputs(config)
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
            run.importance_step(keys)
    params = run.build_params()
    report = run.report()
    not_loaded = load_restorably(cell, params)
    config.report = report
    if not_loaded:
        logger.warning("Parameters left at their initial values: %s", ", ".join(not_loaded[:MAX_LISTED]))
    logger.info("Finished pruning the weights into %s.", type(cell).__name__)

