"""MindSpore backends for pruning."""
