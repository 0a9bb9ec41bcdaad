"""Which Linear layers belong to which stage of progressive sparsification.

The original's order is kept - MLP projections, then the attention output projection, then q/k/v. A layer's stage
comes from the one family description (:mod:`msmodelslim.common.structure.families`), so every family it knows
(fused ``qkv_proj`` / ``gate_up_proj`` included) is staged the same way here as in the pruning tools; layers no
stage names (heads, poolers) are sparsified in a last stage instead of being left dense.
"""
from msmodelslim.common.structure.families import ATTENTION_OUTPUT, MLP, OTHER, QKV, STAGE_ORDER as ORDER, stage_of

__all__ = ["ATTENTION_OUTPUT", "MLP", "OTHER", "ORDER", "QKV", "stage_of"]
