"""The MindSpore side of ``prune_model_weight``: a ``.ckpt`` (or MindSpore ``.safetensors``) file in, the Cell's
parameters out."""
