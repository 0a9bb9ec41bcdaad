"""Models and state checks shared by the PruneTorch / prune_model_weight sweep tests (issue 11).

``Snapshot`` records what "identical" means in the sweep: every state-dict tensor ``torch.equal`` (NaN-aware),
the same Parameter and buffer objects, the same module attributes and the same Hugging Face config."""
import copy
import math

import torch
import transformers as T
from torch import nn

from msmodelslim.utils.checkpoint import save_state_dict

VOCAB = 128
X_SHAPE = (2, 3, 16, 16)


def small_cnn(seed=0):
    """``0`` conv 3->16, ``1`` BN, ``3`` conv 16->32, ``4`` BN, ``8`` Linear 32->10 (the sweep's CNN layout)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def cnn_input(batch=2):
    return torch.randn(batch, *X_SHAPE[1:], generator=torch.Generator().manual_seed(1))


def half_mask(size=32, first_kept=True):
    half = size // 2
    return "-" * half + "x" * half if first_kept else "x" * half + "-" * half


def cnn_desc():
    """A valid desc for :func:`small_cnn`: conv ``3`` keeps its first 16 output channels."""
    mask = half_mask()
    return {"3": {"output": [16, mask]}, "4": {"input": [16, mask]}, "8": {"input": [16, mask]}}


def llama(layers=2, tie=False, seed=0, ffn=128):
    """A tiny random ``LlamaForCausalLM`` (hidden 64, 4/2 heads), as in the sweep's fixtures."""
    torch.manual_seed(seed)
    config = T.LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=ffn, max_position_embeddings=64,
                           tie_word_embeddings=tie)
    return T.LlamaForCausalLM(config).eval()


def gpt2(seed=0):
    """A tiny random GPT-2; its ``lm_head`` is tied to ``transformer.wte``."""
    torch.manual_seed(seed)
    config = T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                          eos_token_id=0)
    return T.GPT2LMHeadModel(config).eval()


def token_ids(batch=2, length=8):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(0))


def save(model, path):
    """Write ``model``'s state dict to ``path`` (safetensors or torch by suffix); returns ``str(path)``."""
    save_state_dict(model.state_dict(), str(path))
    return str(path)


class Snapshot:
    """Everything a failed call must leave as it was (see the module docstring)."""

    def __init__(self, model):
        self.model = model
        self.values = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.objects = {k: v for k, v in model.state_dict(keep_vars=True).items()}
        self.attributes = {name: _plain_attributes(module) for name, module in model.named_modules()}
        config = getattr(model, "config", None)
        self.config = config.to_dict() if config is not None else None

    def differences(self):
        """A list of what changed (empty when identical)."""
        found = []
        now = self.model.state_dict(keep_vars=True)
        if set(now) != set(self.values):
            found.append(f"keys {sorted(set(now) ^ set(self.values))}")
        for key, value in self.values.items():
            tensor = now.get(key)
            if tensor is None:
                continue
            if tensor is not self.objects[key]:
                found.append(f"{key}: another tensor object")
            if tensor.shape != value.shape or not torch.equal(_nan_free(tensor.detach()), _nan_free(value)):
                found.append(f"{key}: values")
        for name, module in self.model.named_modules():
            if _plain_attributes(module) != self.attributes.get(name):
                found.append(f"{name}: attributes")
        config = getattr(self.model, "config", None)
        if self.config is not None and config.to_dict() != self.config:
            found.append("config")
        return found

    def assert_identical(self):
        differences = self.differences()
        assert not differences, f"the model changed: {differences[:5]}"


def _nan_free(tensor):
    return torch.nan_to_num(tensor, nan=12345.0) if tensor.is_floating_point() else tensor


def _plain_attributes(module):
    """The int/float/str/tuple attributes of a module (out_channels, num_heads, groups ...)."""
    return {k: v for k, v in vars(module).items()
            if isinstance(v, (int, float, str, tuple)) and not (isinstance(v, float) and math.isnan(v))}


def runs(model, inputs):
    """Whether ``model`` runs on ``inputs`` (a Tensor or a dict of keyword arguments) to a finite output."""
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    out = out.logits if hasattr(out, "logits") else out
    return bool(torch.isfinite(out).all())


def fresh(model):
    return copy.deepcopy(model)
