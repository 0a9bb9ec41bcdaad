"""Structured pruning (PruneTorch) and its building blocks."""
