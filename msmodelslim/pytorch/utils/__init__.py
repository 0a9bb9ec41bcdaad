"""Torch-only helpers: feeding calibration data, block-by-block iteration, evaluation, the demo task."""
