"""Activation importance on NumPy arrays (Minitron, Muralidharan et al. 2024, section 2.2): which heads, FFN
neurons and hidden channels a small model keeps, from mean |activation| on calibration data in the big model.

The same rule as the PyTorch backend (``msmodelslim.pytorch.prune.transformer_prune.selection``):

* an FFN neuron scores the mean |x| of its channel at the input of the down projection;
* a head scores the mean over its channels of mean |x| at the input of the attention output projection;
* a hidden channel scores the mean over the normalisation layers of their mean |output|, each layer's scores
  divided by their mean first so that every layer weighs alike.

A backend fills an :class:`ActivationStats` (keyed ``(module name, "in" | "out")``) with its own hooks; this
module only reads it. Framework-free.
"""
import numpy as np

from msmodelslim.common.structure.layout import FFN, HIDDEN, IN, OUT, Q
from msmodelslim.common.prune.transformer_prune.weight_importance import apply_scores, weight_scores
from msmodelslim.utils.logging import logger



class ActivationStats:
    """Per-channel sums of |x| (float64) and the number of vectors summed, per ``(module name, "in" | "out")``."""

    def __init__(self):
        self.sums, self.counts = {}, {}
        self.empty = 0  # activations seen with no element (a batch of 0 samples or 0 tokens)

    def add(self, key, array):
        """Add the |values| of a floating-point array, reduced over every axis but the last (the channels)."""
        array = np.asarray(array)
        if array.size == 0:
            self.empty += 1
            return
        flat = np.abs(array.astype(np.float64, copy=False)).reshape(-1, array.shape[-1])
        self.sums[key] = self.sums.get(key, 0) + flat.sum(0)
        self.counts[key] = self.counts.get(key, 0) + flat.shape[0]

    def mean(self, key):
        """Mean |x| per channel, or None when ``key`` was never seen."""
        return self.sums[key] / self.counts[key] if key in self.sums else None

    def keys(self):
        return list(self.sums)


def resolve(stats, module, where):
    """``module``'s mean |x|, allowing for a base-model prefix difference (``bert.`` and friends); None if unseen."""
    value = stats.mean((module, where))
    if value is not None:
        return value
    for name, kind in stats.keys():
        if kind == where and (name.endswith("." + module) or module.endswith("." + name)):
            return stats.mean((name, kind))
    return None


def _is_projection_input(key, owner):
    """Whether ``(key, axis)`` with ``owner`` is the input axis of the down (FFN) or attention output (Q)
    projection's weight."""
    return owner.view in (FFN, Q) and owner.role == IN and key.endswith(".weight")


def activation_scores(layout, source_of, stats):
    """``{(group name, view): per-channel scores}`` of the changing groups of ``layout`` that ``stats`` covers;
    ``source_of(key)`` is the big model's name of the tensor that becomes the small model's ``key``."""
    scores = {}
    for (key, _), owner in layout.axes.items():
        group, view = owner.group, owner.view
        slot = (group.name, view)
        if not group.changes or slot in scores or not _is_projection_input(key, owner):
            continue
        value = resolve(stats, source_of(key)[: -len(".weight")], IN)
        expected = group.big if view == FFN else group.big[0] * group.head_dim
        if value is not None and len(value) == expected:
            scores[slot] = value
    if layout.hidden.changes:
        norms = [stats.mean(k) for k in stats.keys() if k[1] == OUT]
        norms = [n / n.mean() for n in norms if len(n) == layout.hidden.big and n.mean() > 0]
        if norms:
            scores[(layout.hidden.name, HIDDEN)] = np.stack(norms).mean(0)
    return scores


def apply_activation_importance(layout, stats, source_of, read):
    """Choose the kept units of every group of ``layout`` by activation importance. Groups the statistics miss
    are scored by weight norms (``read(key)`` gives the checkpoint array that becomes ``key``), as in the PyTorch
    backend: the weight scores are merged under the activation scores."""
    scores = activation_scores(layout, source_of, stats)
    scored = {name for name, _ in scores}
    missing = [g for g in layout.groups() if g.changes and g.name not in scored]
    if missing:
        logger.warning("No activation statistics for %s; using weight norms there.",
                       ", ".join(g.name for g in missing[:5]))
        scores = {**weight_scores(layout, read), **scores}
    apply_scores(layout, scores)
