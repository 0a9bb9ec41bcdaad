"""msmodelslim: make trained PyTorch models smaller and faster.

Capabilities (import paths as in the msModelSlim documentation):

* ``msmodelslim.pytorch.prune.prune_torch.PruneTorch`` - importance-based structured pruning;
* ``msmodelslim.common.prune.transformer_prune.prune_model`` - transformer weight pruning into a smaller model;
* ``msmodelslim.pytorch.sparse.sparse_tools`` - one-shot unstructured and N:M sparsity of Linear layers;
* ``msmodelslim.common.knowledge_distill.knowledge_distill`` - knowledge distillation.

Importing the package is cheap: it loads no torch and no transformers.
"""
from msmodelslim.utils.logging import logger, set_logger_level

__version__ = "0.1.0"
__all__ = ["set_logger_level"]
