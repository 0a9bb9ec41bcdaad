"""One file per algorithm; each exposes ``prune(weight, stats, sparsity, n_m=None, options=None)`` returning
``(new weight, mask)`` for a float32 ``[out, in]`` weight, with ``mask`` True where a weight was pruned."""
from msmodelslim.pytorch.sparse.sparse_tools.methods import dsnot, magnitude, sparsegpt, wanda

PRUNERS = {"weight_magnitude": magnitude.prune, "magnitude": wanda.prune, "hessian": sparsegpt.prune,
           "par": dsnot.prune, "par_v2": dsnot.prune}
# Methods that solve several layers sharing one input at once: ``prune_group(weights, stats, sparsities, n_m,
# options)`` returns what ``prune`` would return for each layer.
GROUP_PRUNERS = {"hessian": sparsegpt.prune_group}
UPDATES_WEIGHTS = {"hessian"}  # the others only zero weights
NEEDS = {"weight_magnitude": set(), "magnitude": {"sq"}, "hessian": {"hessian"}, "par": {"sq", "moments"},
         "par_v2": {"sq", "moments"}}
