"""Data-free weight importance on NumPy arrays: which heads, FFN neurons and hidden channels a small model keeps.

The same rule as the PyTorch backend (``msmodelslim.pytorch.prune.transformer_prune.selection``): a channel's
score is the L2 norm of its slice in every coupled tensor, each tensor's norms divided by their mean so that all
tensors weigh alike, averaged over the tensors. A head scores the mean of its query channels; a key/value group
the sum of its query heads plus the mean of its key/value channels. Ties go to the lower index.
"""
import numpy as np

from msmodelslim.common.structure.layout import FFN, HIDDEN, KV, Q, HeadUnits
from msmodelslim.utils.logging import logger


def top_indices(scores, count):
    """The ``count`` best-scoring indices, ascending; ties go to the lower index."""
    values = [float(s) for s in scores]
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return sorted(order[:count])


def channel_norms(array, axis):
    """L2 norm of each slice of ``array`` along ``axis`` (in float64), divided by their mean when positive."""
    return _mean_normalised(_raw_norms(array, axis))


def _raw_norms(array, axis):
    moved = np.moveaxis(np.asarray(array, dtype=np.float64), axis, 0)
    return np.linalg.norm(moved.reshape(moved.shape[0], -1), axis=1)


def _mean_normalised(norms):
    mean = norms.mean() if len(norms) else 0
    return norms / mean if mean > 0 else norms


def weight_scores(layout, read):
    """``{(group name, view): per-channel scores}`` for every changing group of ``layout``; ``read(key)`` gives
    the checkpoint array that becomes the small model's ``key``.

    Each part of a fused tensor (q, k and v of a fused qkv; gate and up of a fused gate_up) counts as a tensor of
    its own, so a fused model scores its units exactly as the same model with separate projections.
    """
    sums, counts = {}, {}
    for (key, axis), owner in layout.axes.items():
        group = owner.group
        if not group.changes:
            continue
        norms = _raw_norms(read(key), axis)
        start = 0
        for view, width in group.parts(owner.view, len(norms)):
            slot = (group.name, view)
            sums[slot] = sums.get(slot, 0) + _mean_normalised(norms[start:start + width])
            counts[slot] = counts.get(slot, 0) + 1
            start += width
    return {slot: sums[slot] / counts[slot] for slot in sums}


def choose_heads(group, scores):
    """Fill ``group.keep`` with the best key/value groups and, in each, the best query heads."""
    (heads, kv_heads), (small_heads, small_kv) = group.big, group.small
    rep_big, rep_small = heads // kv_heads, small_heads // small_kv
    q = scores.get((group.name, Q))
    kv = scores.get((group.name, KV))
    per_head = q.reshape(heads, group.head_dim).mean(1) if q is not None else np.zeros(heads)
    per_group = per_head.reshape(kv_heads, -1).sum(1)
    if kv is not None:
        per_group = per_group + kv.reshape(kv_heads, group.head_dim).mean(1)
    group.keep = []
    for g in top_indices(per_group, small_kv):
        members = list(range(g * rep_big, (g + 1) * rep_big))
        chosen = top_indices([per_head[h] for h in members], rep_small)
        group.keep.append((g, [members[i] for i in chosen]))


def choose_first(group):
    """The original's choice: the first units."""
    if isinstance(group, HeadUnits):
        (heads, kv_heads), (small_heads, small_kv) = group.big, group.small
        rep_big, rep_small = heads // max(kv_heads, 1), small_heads // max(small_kv, 1)
        group.keep = [(g, list(range(g * rep_big, g * rep_big + rep_small))) for g in range(small_kv)]
    else:
        group.keep = list(range(group.small))


def apply_scores(layout, scores):
    """Choose the kept units of every changing group of ``layout`` from ``scores`` (``{(group name, view):
    per-channel scores}``); a group without scores keeps its first units (logged at WARNING)."""
    for group in layout.groups():
        choose_first(group)
        if not group.changes:
            continue
        if isinstance(group, HeadUnits):
            if (group.name, Q) in scores or (group.name, KV) in scores:
                choose_heads(group, scores)
            else:
                logger.warning("No importance for %s: keeping its first heads.", group.name)
            continue
        channel_scores = scores.get((group.name, HIDDEN if group is layout.hidden else FFN))
        if channel_scores is not None and len(channel_scores) == group.big:
            group.keep = top_indices(channel_scores, group.small)
        else:
            logger.warning("No importance for %s: keeping its first %d channels.", group.name, group.small)


def apply_weight_importance(layout, read):
    """Choose the kept units of every group of ``layout`` by weight importance (unchanged groups keep all)."""
    apply_scores(layout, weight_scores(layout, read))
