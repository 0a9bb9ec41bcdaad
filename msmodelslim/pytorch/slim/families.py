"""The Hugging Face families ``slim_model`` can reshape: which config attributes hold the layer count, hidden
size, heads, key-value heads and FFN width, and how a candidate's config is written.

To add a family: one :class:`SlimFamily` record (its ``model_type`` names and config attributes); the family must
also be known to the structure description (``msmodelslim.common.structure.families``), which tells
``prune_model_weight`` which tensors form a head, a neuron and a hidden channel.
"""
import copy
from dataclasses import dataclass, field

import torch

from msmodelslim.common.slim.search import Architecture, SearchSpace


@dataclass(frozen=True)
class SlimFamily:
    name: str
    model_types: tuple
    layers: str
    hidden: str
    heads: str
    ffn: str
    kv_heads: str = None  # None: as many key-value heads as heads
    head_dim: str = None  # a config attribute that fixes the head size independently of the hidden size
    ffn_default: float = None  # FFN width = this x hidden when the attribute is None (GPT-2's n_inner)
    follow_hidden: tuple = field(default=())  # attributes equal to the hidden size that move with it


FAMILIES = (
    SlimFamily("llama", ("llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo", "granite"), "num_hidden_layers",
               "hidden_size", "num_attention_heads", "intermediate_size", kv_heads="num_key_value_heads",
               head_dim="head_dim"),
    SlimFamily("gpt2", ("gpt2",), "n_layer", "n_embd", "n_head", "n_inner", ffn_default=4),
    SlimFamily("opt", ("opt",), "num_hidden_layers", "hidden_size", "num_attention_heads", "ffn_dim",
               follow_hidden=("word_embed_proj_dim",)),
    SlimFamily("bert", ("bert", "roberta", "xlm-roberta", "electra", "camembert"), "num_hidden_layers",
               "hidden_size", "num_attention_heads", "intermediate_size"),
)


def family_of(model):
    """The :class:`SlimFamily` of a Hugging Face model, or None."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def supported_types():
    return sorted(t for f in FAMILIES for t in f.model_types)


def max_sequence_length(config):
    """The longest sequence the model's config allows (``max_position_embeddings``, ``n_positions``), or None."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and config.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= (config.pad_token_id or 0) + 1  # positions start after the padding index
    return limit


def dense_architecture(family, config):
    """The teacher's :class:`Architecture` read from its config."""
    hidden = getattr(config, family.hidden)
    heads = getattr(config, family.heads)
    ffn = getattr(config, family.ffn)
    if ffn is None:
        ffn = int(family.ffn_default * hidden)
    kv_heads = getattr(config, family.kv_heads, None) if family.kv_heads else None
    return Architecture(getattr(config, family.layers), hidden, heads, kv_heads or heads, ffn)


def search_space(family, config, prune_hidden):
    """The :class:`SearchSpace` of a teacher: its head size is kept; the hidden size follows the heads unless the
    family stores the head size on its own."""
    dense = dense_architecture(family, config)
    head_dim = getattr(config, family.head_dim, None) if family.head_dim else None
    independent = head_dim is not None or (family.head_dim is not None and dense.hidden % dense.heads == 0)
    follow = [getattr(config, name, None) for name in family.follow_hidden]
    if any(value is not None and value != dense.hidden for value in follow):
        prune_hidden = False  # e.g. OPT-350m projects a smaller word embedding in and out
    return SearchSpace(dense, head_dim or dense.hidden // dense.heads, not independent, prune_hidden)


def candidate_config(family, config, space, arch):
    """A copy of the teacher's config with the candidate's shape (per-layer lists cut to the new depth)."""
    small = copy.deepcopy(config)
    setattr(small, family.layers, arch.layers)
    setattr(small, family.hidden, arch.hidden)
    setattr(small, family.heads, arch.heads)
    setattr(small, family.ffn, arch.ffn)
    if family.kv_heads:
        setattr(small, family.kv_heads, arch.kv_heads)
    if family.head_dim:
        setattr(small, family.head_dim, space.head_dim)
    for name in family.follow_hidden:
        if getattr(config, name, None) is not None:
            setattr(small, name, arch.hidden)
    for name in ("layer_types",):
        value = getattr(config, name, None)
        if isinstance(value, list) and value and len(value) == space.dense.layers:
            # cut to the new depth; a deeper model (the two-layer model that sizes a one-layer teacher) repeats it
            setattr(small, name, [value[i % len(value)] for i in range(arch.layers)])
    return small


def build(model_class, config, device=None):
    """A randomly initialised model of ``config`` in float32 (on the meta device: shapes only)."""
    with torch.device(device or "cpu"):
        return model_class(config).float() if device != "meta" else model_class(config)


def unique_parameters(model):
    """Each parameter once (tied weights share one)."""
    seen, params = set(), []
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            params.append(param)
    return params


def embedding_parameters(model):
    """The vocabulary matrices: input embeddings, and the output embeddings when they are a separate tensor."""
    found = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and all(weight is not w for w in found):
            found.append(weight)
    return found


def model_size(model, kind):
    """The size of ``model`` under budget ``kind`` (``params`` / ``non_embedding_params``)."""
    total = sum(p.numel() for p in unique_parameters(model))
    if kind == "non_embedding_params":
        total -= sum(p.numel() for p in embedding_parameters(model))
    return total

