"""Shared helpers: logging, argument checks, checkpoint I/O, calibration."""
