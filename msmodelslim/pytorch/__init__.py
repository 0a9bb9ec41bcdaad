"""PyTorch backends."""
