"""Calibration statistics of a big MindSpore Cell for ``prune_model_weight``: activation importance and
``layer_id_map="auto"``.

The calibration batches run through the big Cell in PyNative mode, one batch at a time, with forward hooks that
only read:

* mean |x| per channel at the input of every dense layer (``nn.Dense``, ``mint.nn.Linear``) and at the output of
  every normalisation layer, accumulated in float64 NumPy (:class:`ActivationStats`), as the PyTorch backend does;
  the choice rule itself is the framework-free one of ``common/prune/transformer_prune/activation_importance.py``;
* block influence (ShortGPT): mean over tokens of 1 - cos(block input, block output) for each repeated block.

The PyTorch backend runs the batches block by block (memory: one block's activations for all batches); here each
batch runs through the whole Cell (memory: one batch's activations). Both see the same activations, so the
statistics are the same. One pass collects everything a ``prune_model_weight`` call needs.
"""
from dataclasses import dataclass, field

from mindspore import mint, nn

from msmodelslim.common.prune.transformer_prune.activation_importance import IN, OUT, ActivationStats
from msmodelslim.common.structure.families import detect_family, module_names
from msmodelslim.mindspore.prune.transformer_prune import calibration

DENSE_TYPES = (nn.Dense, mint.nn.Linear)
NORM_PARAMS = ("gamma", "weight")


@dataclass
class Calibration:
    """What one pass over the calibration data measured: activation statistics (None when not asked for) and
    ``{block name: influence}``."""

    stats: ActivationStats = None
    influence: dict = field(default_factory=dict)


def is_norm(cell):
    """A normalisation layer: no sub-cells, only 1-D parameters, one of them a scale (``gamma`` or ``weight``):
    LayerNorm, BatchNorm, GroupNorm, RMSNorm and custom norms alike."""
    if isinstance(cell, DENSE_TYPES) or any(True for _ in cell.cells()):
        return False
    own = list(cell.parameters_and_names(expand=False))
    return bool(own) and all(len(p.shape) == 1 for _, p in own) and any(
        name.rsplit(".", 1)[-1] in NORM_PARAMS for name, _ in own)


def find_blocks(cell):
    """The repeated blocks of ``cell`` as ``[(name, sub-cell)]``, or ``[]`` when it has none.

    A described family (:mod:`msmodelslim.common.structure.families`) gives its layers; otherwise the ``nn.CellList`` / ``nn.SequentialCell`` of two or
    more cells holding the most parameters is taken.
    """
    cells = dict(cell.cells_and_names())
    _, layers = detect_family(module_names(cell.parameters_dict()))
    if layers and all(prefix[:-1] in cells for prefix in layers):
        return [(prefix[:-1], cells[prefix[:-1]]) for prefix in layers]
    best, best_params = [], 0
    for name, sub in cells.items():
        if isinstance(sub, (nn.CellList, nn.SequentialCell)) and len(sub) >= 2:
            params = sum(p.size for p in sub.get_parameters())
            if params > best_params:
                best = [(f"{name}.{i}" if name else str(i), child) for i, child in enumerate(sub)]
                best_params = params
    return best


def _stat_hooks(cell, stats):
    """``[(sub-cell, hook)]`` recording dense inputs and norm outputs into ``stats``."""
    watched = []
    for name, sub in cell.cells_and_names():
        if isinstance(sub, DENSE_TYPES):
            watched.append((sub, _recorder(stats, (name, IN), lambda args, output: args)))
        elif is_norm(sub):
            watched.append((sub, _recorder(stats, (name, OUT), lambda args, output: output)))
    return watched


def _recorder(stats, key, pick):
    def hook(_cell, args, output):
        array = calibration.float_array(calibration.first_tensor(pick(args, output)))
        if array is not None:
            stats.add(key, array)
    return hook


class _Influence:
    """Forward hooks summing 1 - cos(block input, block output) per block; a block whose output is not hidden
    states shaped like its input is noted (a hook must not raise inside MindSpore's forward)."""

    def __init__(self, blocks):
        self.blocks = blocks
        self.sums = {name: 0.0 for name, _ in blocks}
        self.counts = {name: 0 for name, _ in blocks}
        self.bad = None

    def hooks(self):
        return [(block, self._hook(name)) for name, block in self.blocks]

    def _hook(self, name):
        def hook(_cell, args, kwargs, output):
            hidden = args[0] if args else kwargs.get("hidden_states")
            before = calibration.float_array(hidden)
            after = calibration.float_array(calibration.first_tensor(output))
            if before is None or after is None or before.shape != after.shape:
                self.bad = self.bad or name
                return
            total, count = calibration.cosine_distance_sum(before, after)
            self.sums[name] += total
            self.counts[name] += count
        return hook

    def result(self):
        """``{block name: mean 1 - cos}``.

        Raises:
            ValueError: a block does not map hidden states to hidden states of the same shape, or no token was
                seen.
        """
        if self.bad is not None:
            raise ValueError(f"layer_id_map='auto': block '{self.bad}' does not map hidden states to hidden states "
                             "of the same shape; give layer_id_map explicitly.")
        if not any(self.counts.values()):
            raise ValueError("layer_id_map='auto' needs at least one sample: the calibration batches hold no token.")
        return {name: self.sums[name] / self.counts[name] for name, _ in self.blocks if self.counts[name]}


def calibrate(cell, dataset, activations=True, influence=False):
    """Run ``dataset`` (a list of batches: Tensor, tuple/list of positional or dict of keyword arguments of
    ``cell``) through the big ``cell`` once and return a :class:`Calibration` holding the activation statistics
    (``activations``) and the block influence (``influence``). The Cell is not changed: hooks are removed and
    train/eval flags restored on every path, also on error.

    Raises:
        TypeError: a batch of another type.
        ValueError: a batch without samples; ``influence`` for a Cell without repeated blocks, or blocks that do not
            map hidden states to hidden states; activations that hold no element at all.
        RuntimeError: the Cell fails on a batch (the message names it).
    """
    what = "activation importance" if activations else "layer_id_map='auto'"
    calibration.check_samples(dataset, what)
    result = Calibration(stats=ActivationStats() if activations else None)
    tracker = None
    if influence:
        blocks = find_blocks(cell)
        if not blocks:
            raise ValueError(f"layer_id_map='auto': {type(cell).__name__} has no repeated blocks (a CellList of "
                             "layers); give layer_id_map explicitly.")
        tracker = _Influence(blocks)
    stat_hooks = _stat_hooks(cell, result.stats) if activations else []
    with calibration.eval_mode(cell), calibration.forward_hooks(stat_hooks), \
            calibration.forward_hooks(tracker.hooks() if tracker else [], with_kwargs=True):
        calibration.run_batches(cell, dataset)
    if activations and result.stats.empty and not result.stats.sums:
        raise ValueError("activation importance needs at least one sample: every calibration batch gave empty "
                         "activations (batches of 0 samples or 0 tokens?).")
    if tracker is not None:
        result.influence = tracker.result()
    return result
