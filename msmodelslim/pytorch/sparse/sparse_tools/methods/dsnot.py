"""Prune-and-regrow refinement of a Wanda mask, the original's ``par`` / ``par_v2`` (DSnoT: Zhang et al. 2024,
"Dynamic Sparse No Training: Training-Free Fine-tuning for Sparse LLMs").

Pruning row i shifts its expected output by e_i = sum over pruned j of W_ij * E[x_j] (Eq. 4). Starting from the
Wanda mask, each row repeatedly swaps one pruned weight back in and one kept weight out:

* regrow the pruned weight that moves e_i towards zero the most per unit of input variance,
  argmax over pruned j with sign(W_ij E[x_j]) = sign(e_i) of |W_ij E[x_j]| / Var[x_j]^pow (Eq. 6);
* prune the kept weight with the lowest Wanda score among those that do not push e_i back further,
  i.e. with sign(W_ij E[x_j]) != sign(e_i) (Eq. 7).

A swap is kept only if it lowers |e_i|; a row stops when no swap helps, when |e_i| <= ``swap_threshold``, or after
``max_swaps`` swaps. Per-row counts (and N:M groups: swaps stay inside one group) are preserved; only the mask
changes. ``par`` runs until no swap helps (threshold 0, at most as many swaps as the row is wide); ``par_v2``
uses at most 50 swaps and threshold 0.1, the original's internal defaults.
"""
import torch

from msmodelslim.pytorch.sparse.sparse_tools.methods import wanda
from msmodelslim.pytorch.sparse.sparse_tools.methods.masks import score_mask

DEFAULTS = {"par": {"max_swaps": None, "swap_threshold": 0.0}, "par_v2": {"max_swaps": 50, "swap_threshold": 0.1}}
POW_OF_VAR = 1.0


def mean_shift(weight, mask, mean):
    """Per row: sum over pruned weights of W_ij * E[x_j]."""
    return (weight * mean.unsqueeze(0) * mask).sum(1)


def refine(weight, mask, stats, max_swaps, threshold, n_m=None):
    """Swap pruned and kept weights row by row to drive the mean output shift to zero; returns the new mask."""
    mean, variance = stats.input_mean, stats.input_var
    shift = weight * mean.unsqueeze(0)  # what each weight adds to e_i when pruned
    regrow_value = shift.abs() / variance.clamp(min=1e-12).pow(POW_OF_VAR).unsqueeze(0)
    prune_value = wanda.scores(weight, stats)
    mask = mask.clone()
    error = (shift * mask).sum(1)
    active = error.abs() > threshold
    rows = torch.arange(weight.shape[0], device=weight.device)
    limit = weight.shape[1] if max_swaps is None else max_swaps
    group_of = torch.arange(weight.shape[1], device=weight.device) // n_m[1] if n_m else None
    for _ in range(limit):
        if not bool(active.any()):
            break
        sign = torch.sign(error).unsqueeze(1)
        can_regrow = mask & (torch.sign(shift) == sign) & active.unsqueeze(1)
        regrow = torch.where(can_regrow, regrow_value, torch.full_like(regrow_value, -1.0)).argmax(1)
        can_prune = ~mask & (torch.sign(shift) != sign)
        if group_of is not None:
            can_prune &= group_of.unsqueeze(0) == group_of[regrow].unsqueeze(1)
        prune = torch.where(can_prune, prune_value, torch.full_like(prune_value, float("inf"))).argmin(1)
        possible = can_regrow.any(1) & can_prune[rows, prune]
        new_error = error - shift[rows, regrow] + shift[rows, prune]
        accept = active & possible & (new_error.abs() < error.abs())
        if not bool(accept.any()):
            break
        accepted = rows[accept]
        mask[accepted, regrow[accept]] = False
        mask[accepted, prune[accept]] = True
        error = torch.where(accept, new_error, error)
        active = accept & (error.abs() > threshold)
    return mask


def prune(weight, stats, sparsity, n_m=None, options=None):
    """Return ``(weight with zeros, mask)``. ``options``: ``variant`` ("par" | "par_v2"), ``max_swaps``,
    ``swap_threshold`` (None: the variant's defaults)."""
    options = options or {}
    defaults = DEFAULTS[options.get("variant", "par_v2")]
    max_swaps = options.get("max_swaps")
    threshold = options.get("swap_threshold")
    max_swaps = defaults["max_swaps"] if max_swaps is None else max_swaps
    threshold = defaults["swap_threshold"] if threshold is None else threshold
    mask = score_mask(wanda.scores(weight, stats), sparsity, n_m)
    mask = refine(weight, mask, stats, max_swaps, threshold, n_m)
    return weight.masked_fill(mask, 0), mask
