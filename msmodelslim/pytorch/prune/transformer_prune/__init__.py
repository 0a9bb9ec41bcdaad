"""The steps behind ``prune_model_weight``: renaming layer blocks, slicing mismatched tensors, choosing by
importance, and building the small model's complete state dict from a lazily read checkpoint."""
