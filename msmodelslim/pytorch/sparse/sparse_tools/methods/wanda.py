"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"), the original's
``magnitude`` method.

Score S_ij = |W_ij| * ||X_j||_2 (Eq. 1), where X_j is input feature j over all calibration tokens; the weights
with the lowest scores in each output row (the paper's comparison group) are zeroed, the others are untouched.
"""
from msmodelslim.pytorch.sparse.sparse_tools.methods.masks import score_mask


def scores(weight, stats):
    """|W| * ||X_j||: the input norm of each column from the accumulated sum of squares."""
    return weight.abs() * stats.input_sq_sum.sqrt().unsqueeze(0)


def prune(weight, stats, sparsity, n_m=None, options=None):
    """Return ``(weight with zeros, mask)``."""
    mask = score_mask(scores(weight, stats), sparsity, n_m)
    return weight.masked_fill(mask, 0), mask
