"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"),
the original's ``hessian`` method.

With H = X^T X + damping (the Hessian of the layer-wise squared error), columns are processed in blocks of
``blocksize``: inside a block the mask takes the weights with the lowest w^2 / [H^-1]_jj^2 (Eq. 3's saliency) -
over the whole block for unstructured sparsity, per row and group of M columns for N:M - then each column is
zeroed where masked and the error is spread over the remaining columns with the OBS update
delta = -(w_j / [H^-1]_jj) * H^-1_{j,:} (Algorithm 1), using the upper Cholesky factor of H^-1.
"""
import math
from collections import OrderedDict

import torch

from msmodelslim.pytorch.sparse.sparse_tools.methods.masks import lowest_n_of_m, lowest_per_row
from msmodelslim.utils.logging import logger

MAX_DAMPING_RETRIES = 6
UPDATE_COLUMNS = 32  # columns updated one by one before the rest of the matrix is updated at once
# On CUDA the column loop of a sub-block (a few small kernels per column) is captured once per shape as a CUDA graph
# and replayed: the same kernels on the same data, so the same result, without launching each kernel from Python.
USE_CUDA_GRAPHS = True
GRAPHS_KEPT = 8  # shapes whose captured loop is kept (a model has a handful: q/k/v, o, gate/up, down)


def damping(hessian, percdamp):
    """The damping added to H's diagonal: ``percdamp`` times the mean of that diagonal."""
    return percdamp * torch.diagonal(hessian).mean().clamp(min=1e-8)


def inverse_hessian_factor(hessian, percdamp):
    """Upper Cholesky factor U of (H + damping)^-1 (U^T U = (H + damping)^-1); the damping grows tenfold until H is
    positive definite.

    With J the reversal of rows and columns and J H J = M M^T (M lower), H = R R^T for the upper R = J M J, so
    H^-1 = (R^-1)^T R^-1 and U = R^-1 = J M^-1 J: one factorisation and one triangular inverse, instead of
    factorising H, inverting it and factorising the inverse."""
    damp = damping(hessian, percdamp)
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for _ in range(MAX_DAMPING_RETRIES):
        factor, info = torch.linalg.cholesky_ex((hessian + damp * eye).flip(0, 1))
        if int(info) == 0:
            return torch.linalg.solve_triangular(factor, eye, upper=False).flip(0, 1)
        damp = damp * 10
    raise ValueError("the input Hessian is not positive definite even with strong damping")


def _block_mask(weight_block, hinv_diag, segments):
    """Per layer (a ``(rows, sparsity)`` segment of the stacked rows): the ``floor(numel * sparsity)`` lowest
    saliencies of its part of the block (all its rows together), ties by position."""
    saliency = weight_block.square() / hinv_diag.square().unsqueeze(0)
    mask = torch.zeros_like(saliency, dtype=torch.bool)
    for rows, sparsity in segments:
        part = saliency[rows]
        mask[rows] = lowest_per_row(part.reshape(1, -1), int(part.numel() * sparsity)).view_as(part)
    return mask


def _prepared(stats, percdamp):
    """``(dead columns, upper Cholesky factor of the damped inverse Hessian)``, computed once per statistics and
    kept for the other layers that share them."""
    key = ("sparsegpt", percdamp)
    if key not in stats.derived:
        hessian = stats.symmetric_hessian().float()
        dead = torch.diagonal(hessian) == 0
        hessian[dead, dead] = 1
        stats.derived[key] = dead, inverse_hessian_factor(hessian, percdamp)
    return stats.derived[key]


def prune(weight, stats, sparsity, n_m=None, options=None):
    """Return ``(updated weight with zeros, mask)``. ``options``: ``blocksize`` (128), ``percdamp`` (0.01)."""
    return prune_group([weight], stats, [sparsity], n_m, options)[0]


def prune_group(weights, stats, sparsities, n_m=None, options=None):
    """:func:`prune` for several layers that read the same input (one Hessian): their rows are stacked and the
    column loop runs once for all of them - every step of it is row by row, and the unstructured mask is chosen per
    layer - so each layer gets exactly its own result. Returns ``[(updated weight, mask)]`` in the order of ``weights``."""
    options = options or {}
    blocksize, percdamp = options.get("blocksize", 128), options.get("percdamp", 0.01)
    dead, hinv = _prepared(stats, percdamp)
    bounds = [0]
    for weight in weights:
        bounds.append(bounds[-1] + weight.shape[0])
    segments = [(slice(a, b), sparsity) for a, b, sparsity in zip(bounds, bounds[1:], sparsities)]
    weight = torch.cat([w.float() for w in weights]) if len(weights) > 1 else weights[0].clone().float()
    weight[:, dead] = 0
    columns = weight.shape[1]
    m = n_m[1] if n_m else 1
    # The mask is chosen per block of `blocksize` columns (the paper's adaptive selection), the updates are applied
    # per sub-block of UPDATE_COLUMNS: the same arithmetic as one column at a time, with most of it moved from
    # rank-1 updates into matrix products. Sub-blocks hold whole N:M groups, so every group is chosen from fully
    # updated weights.
    step = m * max(1, UPDATE_COLUMNS // m)
    mask = torch.zeros_like(weight, dtype=torch.bool)
    diagonal = torch.diagonal(hinv)
    for start in range(0, columns, blocksize):
        end = min(start + blocksize, columns)
        if n_m is None:
            mask[:, start:end] = _block_mask(weight[:, start:end], diagonal[start:end], segments)
        for first in range(start, end, step):
            last = min(first + step, end)
            sub, errors, pruned = _sweeper(weight, last - first, n_m)(
                weight[:, first:last], hinv[first:last, first:last], mask[:, first:last])
            weight[:, first:last] = sub
            if n_m is not None:
                mask[:, first:last] = pruned
            for rows, _ in segments:  # one product per layer: the same shapes, so the same rounding, as alone
                weight[rows, last:] -= errors[rows] @ hinv[first:last, last:]
    weight = weight.masked_fill(mask, 0)
    return [(weight[rows], mask[rows]) for rows, _ in segments]


def _sweep(sub, hinv_sub, pruned_block, errors, pivots, n_m):
    """The column loop of one sub-block, in place: column i's pruned weights (``pruned_block``, chosen here per
    N:M group when ``n_m`` is given) become errors ``w / [H^-1]_ii`` spread over the columns to its right.
    ``pivots`` is the diagonal of ``hinv_sub``."""
    width = sub.shape[1]
    infinity = torch.full((), math.inf, dtype=sub.dtype, device=sub.device)  # a fill, no copy: CUDA graphs allow it
    # w / [H^-1]_ii where pruned, w / inf = 0 (with w's sign, as w * 0 / [H^-1]_ii) where kept: one kernel per column
    divisors = torch.where(pruned_block, pivots.unsqueeze(0), infinity)
    columns, divisor_columns, error_columns = sub.unbind(1), divisors.unbind(1), errors.unbind(1)
    rights, hinv_rows = [sub[:, i:] for i in range(width)], [hinv_sub[i, i:] for i in range(width)]
    for i in range(width):
        if n_m is not None and i % n_m[1] == 0:
            group = slice(i, min(i + n_m[1], width))
            saliency = sub[:, group].square() / pivots[group].square().unsqueeze(0)
            pruned_block[:, group] = lowest_n_of_m(saliency, *n_m)
            torch.where(pruned_block[:, group], pivots[group].unsqueeze(0), infinity, out=divisors[:, group])
        # the pruned entries of column i are left near zero by the update itself and set to exactly zero at the end
        # (the loop reads only columns right of i), so the column needs no write of its own: fewer small kernels
        torch.div(columns[i], divisor_columns[i], out=error_columns[i])
        rights[i].addr_(error_columns[i], hinv_rows[i], alpha=-1)


class _EagerSweep:
    """The column loop run op by op (CPU, or CUDA without graphs). Returns ``(sub, errors, pruned)``."""

    def __init__(self, n_m):
        self.n_m = n_m

    def __call__(self, sub, hinv_sub, pruned):
        sub = sub.clone()
        errors = torch.empty_like(sub)
        _sweep(sub, hinv_sub, pruned, errors, torch.diagonal(hinv_sub), self.n_m)
        return sub, errors, pruned


class _CapturedSweep:
    """The column loop of one shape captured as a CUDA graph; each call copies the inputs into the graph's own
    tensors and replays it. Returns the graph's tensors ``(sub, errors, pruned)``, valid until the next call."""

    def __init__(self, rows, width, device, n_m):
        self.sub = torch.zeros(rows, width, device=device)
        self.hinv = torch.eye(width, device=device)
        self.pruned = torch.zeros(rows, width, dtype=torch.bool, device=device)
        self.errors = torch.zeros(rows, width, device=device)
        pivots = torch.diagonal(self.hinv)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # a run before the capture, as CUDA graphs require
            _sweep(self.sub, self.hinv, self.pruned, self.errors, pivots, n_m)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            _sweep(self.sub, self.hinv, self.pruned, self.errors, pivots, n_m)

    def __call__(self, sub, hinv_sub, pruned):
        self.sub.copy_(sub)
        self.hinv.copy_(hinv_sub)
        self.pruned.copy_(pruned)
        self.graph.replay()
        return self.sub, self.errors, self.pruned


_captured = OrderedDict()


def _sweeper(weight, width, n_m):
    """The column loop for a sub-block of ``width`` columns of ``weight``: replayed from a CUDA graph on CUDA
    (captured on first use, then kept for the same shape), run op by op elsewhere or if capturing fails."""
    if weight.device.type != "cuda" or not USE_CUDA_GRAPHS:
        return _EagerSweep(n_m)
    key = (weight.device, weight.shape[0], width, n_m)
    if key not in _captured:
        try:
            _captured[key] = _CapturedSweep(weight.shape[0], width, weight.device, n_m)
        except RuntimeError as error:  # e.g. a capture refused by the driver: the eager loop computes the same
            logger.debug("SparseGPT: CUDA graph capture failed (%s); running the column loop op by op", error)
            _captured[key] = _EagerSweep(n_m)
        while len(_captured) > GRAPHS_KEPT:
            _captured.popitem(last=False)
    _captured.move_to_end(key)
    return _captured[key]
