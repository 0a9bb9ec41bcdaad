"""Transformer weight pruning: PruneConfig and prune_model_weight."""
