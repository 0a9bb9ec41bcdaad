"""Pruning front doors."""
