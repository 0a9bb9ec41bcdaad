"""Least-squares reconstruction of the kept weights once a mask is fixed.

With the mask chosen, each row's kept weights w are re-solved to minimise ||(w - w0) X||^2 + damping ||w - w0||^2
(w0 the dense row, X the calibration inputs): the layer's dense outputs reproduced as closely as its remaining weights
allow. SparseGPT's OBS updates approach that optimum greedily, one column at a time; Wanda does not update at all.
The quadratic is solved by conjugate gradients on every row at once, started from the method's own result, so each
step lowers the error of each row (every row has its own mask and its own step sizes). The mask never changes: zeros
stay zeros.
"""
import torch

from msmodelslim.pytorch.sparse.sparse_tools.methods.sparsegpt import damping

STEPS = 10  # conjugate-gradient steps: SmolLM2's perplexity after 10 equals that after 30 to 0.1 %


def damped_hessian(stats, percdamp):
    """``(X^T X + percdamp * mean(diag) * I, live columns)`` (float32; live: an input that is not always zero),
    computed once per statistics and kept for the layers sharing them."""
    key = ("damped_hessian", percdamp)
    if key not in stats.derived:
        hessian = stats.symmetric_hessian().float()
        live = torch.diagonal(hessian) > 0
        hessian.diagonal().add_(damping(hessian, percdamp))
        stats.derived[key] = hessian, live
    return stats.derived[key]


def reconstruct(dense, pruned, mask, hessian, live, steps=STEPS):
    """The kept weights of ``pruned`` re-solved towards the outputs of ``dense`` (both float32 ``[out, in]``) under
    the damped ``hessian``; ``mask`` is True where a weight was pruned, and those entries are returned as exact zeros.
    Columns that are not ``live`` (their input is always zero) carry no output and are left as the method left them."""
    free = ~mask & live.unsqueeze(0)
    weight = pruned.clone()
    residual = ((dense - weight) @ hessian).mul_(free)  # minus the gradient, on the free entries only
    direction = residual.clone()
    norm = residual.square().sum(1, keepdim=True)
    for _ in range(steps):
        curvature = (direction @ hessian).mul_(free)
        step = norm / (direction * curvature).sum(1, keepdim=True)
        step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)  # a row already solved: no step
        weight.addcmul_(step, direction)
        residual.addcmul_(step, curvature, value=-1)
        new_norm = residual.square().sum(1, keepdim=True)
        ratio = torch.nan_to_num(new_norm / norm, nan=0.0, posinf=0.0, neginf=0.0)
        direction.mul_(ratio).add_(residual)
        norm = new_norm
    return weight.masked_fill_(mask, 0)
