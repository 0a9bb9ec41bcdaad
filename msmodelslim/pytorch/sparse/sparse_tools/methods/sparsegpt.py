"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"),
the original's ``hessian`` method.

With H = X^T X + damping (the Hessian of the layer-wise squared error), columns are processed in blocks of
``blocksize``: inside a block the mask takes the weights with the lowest w^2 / [H^-1]_jj^2 (Eq. 3's saliency) -
over the whole block for unstructured sparsity, per row and group of M columns for N:M - then each column is
zeroed where masked and the error is spread over the remaining columns with the OBS update
delta = -(w_j / [H^-1]_jj) * H^-1_{j,:} (Algorithm 1), using the upper Cholesky factor of H^-1.
"""
import torch

from msmodelslim.pytorch.sparse.sparse_tools.methods.masks import lowest_n_of_m, lowest_per_row

MAX_DAMPING_RETRIES = 6
UPDATE_COLUMNS = 32  # columns updated one by one before the rest of the matrix is updated at once


def inverse_hessian_factor(hessian, percdamp):
    """Upper Cholesky factor of (H + damping)^-1; the damping grows tenfold until H is positive definite."""
    diagonal = torch.diagonal(hessian)
    damp = percdamp * diagonal.mean().clamp(min=1e-8)
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for _ in range(MAX_DAMPING_RETRIES):
        factor, info = torch.linalg.cholesky_ex(hessian + damp * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
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
        hessian = stats.hessian.clone().float()
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
    n, m = n_m or (0, 1)
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
            sub = weight[:, first:last].clone()
            hinv_sub = hinv[first:last, first:last]
            errors = torch.zeros_like(sub)
            width = last - first
            # views made once per sub-block: indexing costs more than the arithmetic on these small tensors
            columns_, pruned, error_columns = sub.unbind(1), mask[:, first:last].unbind(1), errors.unbind(1)
            rights, hinv_rows = [sub[:, i:] for i in range(width)], [hinv_sub[i, i:] for i in range(width)]
            pivots = torch.diagonal(hinv_sub).tolist()
            for i in range(width):
                if n_m is not None and (first + i - start) % m == 0:
                    group = slice(i, min(i + m, end - first))
                    saliency = sub[:, group].square() / torch.diagonal(hinv_sub)[group].square().unsqueeze(0)
                    mask[:, first + group.start:first + group.stop] = lowest_n_of_m(saliency, n, m)
                # the pruned weights' error, spread over the columns to the right; the pruned entries of column i
                # are left near zero by the update itself and set to exactly zero at the end (the loop reads only
                # columns right of i), so the column needs no write of its own: fewer small kernels per column
                torch.div(torch.mul(columns_[i], pruned[i]), pivots[i], out=error_columns[i])
                rights[i].addr_(error_columns[i], hinv_rows[i], alpha=-1)
            weight[:, first:last] = sub
            for rows, _ in segments:  # one product per layer: the same shapes, so the same rounding, as alone
                weight[rows, last:] -= errors[rows] @ hinv[first:last, last:]
    weight = weight.masked_fill(mask, 0)
    return [(weight[rows], mask[rows]) for rows, _ in segments]
