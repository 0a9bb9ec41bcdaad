"""Sparsity tools."""
