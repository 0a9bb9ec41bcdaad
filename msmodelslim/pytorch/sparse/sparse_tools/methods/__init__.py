"""One file per algorithm; each exposes ``prune(weight, stats, sparsity, n_m=None, options=None)`` returning
``(new weight, mask)`` for a float32 ``[out, in]`` weight, with ``mask`` True where a weight was pruned."""
from msmodelslim.pytorch.sparse.sparse_tools.methods import dsnot, magnitude, sparsegpt, wanda

PRUNERS = {"weight_magnitude": magnitude.prune, "magnitude": wanda.prune, "hessian": sparsegpt.prune,
           "par": dsnot.prune, "par_v2": dsnot.prune}
UPDATES_WEIGHTS = {"hessian"}  # the others only zero weights
NEEDS = {"weight_magnitude": set(), "magnitude": {"sq"}, "hessian": {"hessian"}, "par": {"sq", "moments"},
         "par_v2": {"sq", "moments"}}
