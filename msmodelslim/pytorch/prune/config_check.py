"""Whether a Hugging Face model's config rebuilds its pruned shapes: the check behind ``save_pretrained`` /
``from_pretrained`` after pruning.

The model is rebuilt from its config on the meta device (no weights allocated) and every tensor shape compared with
the model's; a field the config derives from others (a head size as hidden_size / heads), a layer the pruning left
at another width than its siblings (a cross-attention, a pooler that is an output) or a tower no rule describes all
show up as one mismatching tensor, whatever caused it.
"""
import copy
import logging

import torch



def config_mismatch(model):
    """``"<tensor> is (shape) but the config gives (shape)"`` for the first tensor a model rebuilt from
    ``model.config`` would not have as the model has it; None when all agree, or when the model is not a
    transformers model that its config class can rebuild (nothing to check)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict") or not hasattr(type(model), "config_class"):
        return None
    transformers_logger = logging.getLogger("transformers")
    level = transformers_logger.level
    transformers_logger.setLevel(logging.ERROR)  # a rebuild on the meta device warns about what it cannot init
    try:
        with torch.device("meta"):
            skeleton = type(model)(copy.deepcopy(config))
    except Exception:  # noqa: BLE001 - a model its own class cannot rebuild from its config: nothing to compare
        return None
    finally:
        transformers_logger.setLevel(level)
    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    for name, tensor in model.state_dict().items():
        if name in expected and expected[name] != tuple(tensor.shape):
            return f"{name} is {tuple(tensor.shape)} but the config gives {expected[name]}"
    return None
