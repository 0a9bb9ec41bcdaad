"""Reference architectures written in plain torch (torchvision is not installed here)."""
