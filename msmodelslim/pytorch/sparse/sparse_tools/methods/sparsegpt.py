"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"),
the original's ``hessian`` method.

With H = X^T X + damping (the Hessian of the layer-wise squared error), columns are processed in blocks of
``blocksize``: inside a block the mask takes the weights with the lowest w^2 / [H^-1]_jj^2 (Eq. 3's saliency) -
over the whole block for unstructured sparsity, per row and group of M columns for N:M - then each column is
zeroed where masked and the error is spread over the remaining columns with the OBS update
delta = -(w_j / [H^-1]_jj) * H^-1_{j,:} (Algorithm 1), using the upper Cholesky factor of H^-1.
"""
import torch

from msmodelslim.pytorch.sparse.sparse_tools.methods.masks import lowest_n_of_m

MAX_DAMPING_RETRIES = 6


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


def _block_mask(weight_block, hinv_diag, sparsity):
    """The ``floor(numel * sparsity)`` lowest saliencies of the block (all rows together), ties by position."""
    saliency = weight_block.square() / hinv_diag.square().unsqueeze(0)
    count = int(saliency.numel() * sparsity)
    mask = torch.zeros(saliency.numel(), dtype=torch.bool, device=saliency.device)
    mask[torch.argsort(saliency.flatten(), stable=True)[:count]] = True
    return mask.view_as(saliency)


def prune(weight, stats, sparsity, n_m=None, options=None):
    """Return ``(updated weight with zeros, mask)``. ``options``: ``blocksize`` (128), ``percdamp`` (0.01)."""
    options = options or {}
    blocksize, percdamp = options.get("blocksize", 128), options.get("percdamp", 0.01)
    weight = weight.clone().float()
    hessian = stats.hessian.clone().float()
    columns = weight.shape[1]
    dead = torch.diagonal(hessian) == 0
    hessian[dead, dead] = 1
    weight[:, dead] = 0
    hinv = inverse_hessian_factor(hessian, percdamp)
    mask = torch.zeros_like(weight, dtype=torch.bool)
    for start in range(0, columns, blocksize):
        end = min(start + blocksize, columns)
        block = weight[:, start:end].clone()
        hinv_block = hinv[start:end, start:end]
        errors = torch.zeros_like(block)
        if n_m is None:
            block_mask = _block_mask(block, torch.diagonal(hinv_block), sparsity)
        else:
            block_mask = torch.zeros_like(block, dtype=torch.bool)
        n, m = n_m or (0, 1)
        for i in range(end - start):
            if n_m is not None and i % m == 0:
                group = slice(i, min(i + m, end - start))
                saliency = block[:, group].square() / torch.diagonal(hinv_block)[group].square().unsqueeze(0)
                block_mask[:, group] = lowest_n_of_m(saliency, n, m)
            column = block[:, i]
            kept = column.masked_fill(block_mask[:, i], 0)
            error = (column - kept) / hinv_block[i, i]
            block[:, i:] -= error.unsqueeze(1) @ hinv_block[i, i:].unsqueeze(0)
            block[:, i] = kept
            errors[:, i] = error
        weight[:, start:end] = block
        weight[:, end:] -= errors @ hinv[start:end, end:]
        mask[:, start:end] = block_mask
    return weight.masked_fill(mask, 0), mask
