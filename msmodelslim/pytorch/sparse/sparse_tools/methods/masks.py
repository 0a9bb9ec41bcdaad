"""Deterministic masks from scores: the lowest scores of each row (or of every N:M group) are pruned.

Ties are broken by the lower column index (a stable sort), so identical inputs always give identical masks - the
real SmolLM2 weights, dequantised from 4 bits, have many ties.
"""
import torch


def lowest_per_row(scores, count):
    """Boolean mask (True = pruned) of the ``count`` lowest scores of every row, ties to the lower column index
    (the first ``count`` of a stable sort). Found by selection, not sorting: the ``count``-th lowest value of each
    row, everything below it, and as many of the entries equal to it as are still needed, leftmost first."""
    if count <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if count >= scores.shape[1]:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = _kth_lowest(scores, count)
    below = scores < threshold
    tied = scores == threshold
    needed = count - below.sum(1, keepdim=True)
    return below | (tied & (tied.cumsum(1) <= needed))


LONG_ROW = 1 << 14  # on CUDA, rows longer than this are sorted: kthvalue selects each row in one thread block


def _kth_lowest(scores, count):
    """The ``count``-th lowest value of each row (a ``(rows, 1)`` tensor): the same value by selection or sorting."""
    if scores.is_cuda and scores.shape[1] > LONG_ROW:
        return torch.sort(scores, dim=1).values[:, count - 1:count]
    return torch.kthvalue(scores, count, dim=1, keepdim=True).values


def lowest_n_of_m(scores, n, m):
    """Boolean mask (True = pruned) of the ``n`` lowest scores in every group of ``m`` consecutive columns of each
    row. A last group shorter than ``m`` (when the width is not a multiple of ``m``) loses ``n * len // m``."""
    rows, cols = scores.shape
    full = cols - cols % m
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if full:
        groups = scores[:, :full].reshape(rows, full // m, m)
        mask[:, :full] = _lowest_in_groups(groups, n).reshape(rows, full)
    tail = cols - full
    if tail and n * tail // m:
        mask[:, full:] = lowest_per_row(scores[:, full:], n * tail // m)
    return mask


def score_mask(scores, sparsity, n_m=None):
    """Row-wise mask of ``floor(columns * sparsity)`` lowest scores, or the N:M mask when ``n_m`` is given."""
    if n_m is not None:
        return lowest_n_of_m(scores, *n_m)
    return lowest_per_row(scores, int(scores.shape[1] * sparsity))


RANKED_BY_COMPARISON = 1 << 24  # up to this many pairwise comparisons, rank by comparing instead of sorting


def _lowest_in_groups(groups, n):
    """Mask of the ``n`` lowest of each group (last dimension), ties to the lower index - the first ``n`` of a
    stable sort. Small inputs (SparseGPT asks for one group of columns at a time) are ranked by comparing every
    pair, a few large kernels instead of a sort; the result is the same."""
    m = groups.shape[-1]
    if groups.numel() * m <= RANKED_BY_COMPARISON:
        mine, other = groups.unsqueeze(-1), groups.unsqueeze(-2)
        earlier = torch.ones(m, m, dtype=torch.bool, device=groups.device).tril(-1)
        rank = ((other < mine) | ((other == mine) & earlier)).sum(-1)  # elements sorted before each one
        return rank < n
    order = torch.argsort(groups, dim=-1, stable=True)
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order[..., :n], True)
