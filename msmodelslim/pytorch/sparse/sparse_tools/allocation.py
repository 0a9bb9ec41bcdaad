"""Per-layer sparsity ratios: uniform, or OWL's non-uniform allocation.

OWL (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity"): the layer outlier distribution (LOD) of a layer is the
fraction of its Wanda scores |W_ij| * ||X_j|| larger than M times their mean (Eq. 3). Layers with more outliers
keep more weights: the LODs are rescaled to [0, 2*lambda], centred, and subtracted from the target ratio
(Sec. 4). Paper defaults: lambda = 0.08, M = 5. Here the ratios are then shifted so that the parameter-weighted
mean equals the target exactly.
"""
import torch

MAX_RATIO = 0.99


def outlier_fraction(metrics, m):
    """Fraction of all values in ``metrics`` (a list of tensors) above ``m`` times their common mean."""
    flat = torch.cat([t.flatten().float() for t in metrics])
    return float((flat > m * flat.mean()).float().mean())


def owl_ratios(outliers, sizes, target, lam):
    """Sparsity per group from its outlier fraction; the size-weighted mean is ``target``."""
    lod = torch.tensor(outliers, dtype=torch.float64)
    weights = torch.tensor(sizes, dtype=torch.float64)
    if len(lod) < 2 or float(lod.max() - lod.min()) == 0.0:
        return [target] * len(lod)
    scaled = (lod - lod.min()) / (lod.max() - lod.min()) * 2 * lam
    ratios = target - (scaled - scaled.mean())
    for _ in range(20):  # clamping can move the weighted mean; shift back until it holds
        ratios = ratios + (target - (ratios * weights).sum() / weights.sum())
        ratios = ratios.clamp(0.0, MAX_RATIO)
        if abs(float((ratios * weights).sum() / weights.sum()) - target) < 1e-9:
            break
    return ratios.tolist()
