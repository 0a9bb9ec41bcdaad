"""Plain magnitude pruning (``weight_magnitude``): prune the smallest |W| of each row. Data-free; the baseline of
Han et al. 2015, compared per output row as in the Wanda paper's ablations."""
from msmodelslim.pytorch.sparse.sparse_tools.methods.masks import score_mask


def prune(weight, stats, sparsity, n_m=None, options=None):
    """Return ``(weight with zeros, mask)``; ``stats`` is unused."""
    mask = score_mask(weight.abs(), sparsity, n_m)
    return weight.masked_fill(mask, 0), mask
