"""The PyTorch side of ``prune_model_weight``: choosing by importance on the model's structure, activation
statistics, and building the small model's complete state dict from a lazily read checkpoint. The framework-free
steps (renaming layer blocks, the original's slices, index bookkeeping) live in
``msmodelslim.common.prune.transformer_prune``."""
