"""Deterministic masks from scores: the lowest scores of each row (or of every N:M group) are pruned.

Ties are broken by the lower column index (a stable sort), so identical inputs always give identical masks - the
real SmolLM2 weights, dequantised from 4 bits, have many ties.
"""
import torch


def lowest_per_row(scores, count):
    """Boolean mask (True = pruned) of the ``count`` lowest scores of every row."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if count <= 0:
        return mask
    order = torch.argsort(scores, dim=1, stable=True)
    mask.scatter_(1, order[:, :count], True)
    return mask


def lowest_n_of_m(scores, n, m):
    """Boolean mask (True = pruned) of the ``n`` lowest scores in every group of ``m`` consecutive columns of each
    row. A last group shorter than ``m`` (when the width is not a multiple of ``m``) loses ``n * len // m``."""
    rows, cols = scores.shape
    full = cols - cols % m
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if full:
        groups = scores[:, :full].reshape(rows, full // m, m)
        order = torch.argsort(groups, dim=2, stable=True)
        mask[:, :full] = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, order[:, :, :n], True).reshape(
            rows, full)
    tail = cols - full
    if tail and n * tail // m:
        mask[:, full:] = lowest_per_row(scores[:, full:], n * tail // m)
    return mask


def score_mask(scores, sparsity, n_m=None):
    """Row-wise mask of ``floor(columns * sparsity)`` lowest scores, or the N:M mask when ``n_m`` is given."""
    if n_m is not None:
        return lowest_n_of_m(scores, *n_m)
    return lowest_per_row(scores, int(scores.shape[1] * sparsity))
