"""One description of transformer families: which projections of a layer hold its attention heads, its FFN neurons
and the hidden channels, as data that PruneTorch, ``prune_model_weight`` (both backends) and the sparse tool's
progressive stages all read.

A :class:`Family` names, relative to one layer prefix (``model.layers.3.``), its query/key/value projections
(separate, or one fused ``qkv`` whose rows are ``[q | k | v]``), the attention output projection, the FFN up (and
gate) projections (separate, or one fused ``gate_up`` whose rows are ``[gate | up]``) and down projection, and the
normalisation layers. The coupling rules follow from the names alone:

* a **head unit** is a key/value head with the query heads that share it (grouped-query attention): its rows of
  q, k and v and its columns of the output projection. In a fused ``qkv`` the q part has ``heads * head_dim``
  rows and the k and v parts ``kv_heads * head_dim`` each, so the parts are equal thirds only without grouping;
  the width of q is read from the output projection's input, never assumed;
* an **FFN neuron** is a row of every up/gate projection (row ``i`` and ``ffn + i`` of a fused ``gate_up``) and a
  column of the down projection;
* a **hidden channel** is one channel of the residual stream: every other axis of the hidden size.

Families are found from the model's ``config.model_type`` first (``model_types``), then from the layer names.

How to add a family
-------------------
1. Print the module names of one layer of a tiny model of the family (``model.named_modules()``).
2. Add a :class:`Family` to ``FAMILIES`` with the projection names relative to the layer prefix, the config
   fields that hold the head/FFN counts, and ``model_types``. Use ``qkv`` / ``gate_up`` for fused projections.
3. If the attention module's ``forward`` reads head counts from attributes (``self.num_heads``), list them in
   ``head_attrs`` so PruneTorch patches them; if it reads them from the shared config, set ``heads_in_config``.
4. Add the tiny model to ``tests/common/structure/test_families.py::TINY_MODELS``: the test prunes it with
   PruneTorch and ``prune_model_weight`` and checks the sparse stages of its projections.
"""
import re
from dataclasses import dataclass

MLP, ATTENTION_OUTPUT, QKV, OTHER = "mlp", "attention output", "q/k/v", "other"
STAGE_ORDER = (MLP, ATTENTION_OUTPUT, QKV, OTHER)


@dataclass(frozen=True)
class Family:
    """Names of one transformer family's projections, relative to a layer prefix."""

    name: str
    model_types: tuple = ()  # config.model_type values that select this family before any name matching
    q: str = None
    k: str = None
    v: str = None
    qkv: str = None  # fused [q | k | v] rows: heads*head_dim, kv_heads*head_dim, kv_heads*head_dim
    o: str = None
    up: tuple = ()  # separate up (and gate) projections
    gate_up: str = None  # fused [gate | up] rows, ffn each
    down: str = None
    norms: tuple = ()
    attention: str = None  # the attention module, whose head attributes forward() reads
    head_attrs: tuple = ()  # (attribute, "heads" | "kv_heads" | "q_channels") that PruneTorch patches
    heads_in_config: bool = False  # forward() reads the head count from the shared config: all layers keep equal
    heads_field: str = "num_attention_heads"
    kv_field: str = None
    ffn_field: str = "intermediate_size"
    explicit_head_dim: bool = False  # the config can carry head_dim, so the hidden size may change freely
    conv1d: bool = False  # projection weights are [in, out] (GPT-2's Conv1D) instead of [out, in]

    def projections(self):
        """Every projection name of a layer."""
        return [p for p in (self.q, self.k, self.v, self.qkv, self.o, *self.up, self.gate_up, self.down) if p]

    def ffn_inputs(self):
        """The projections whose output rows are FFN neurons."""
        return [*self.up, *([self.gate_up] if self.gate_up else [])]

    def attention_inputs(self):
        """The projections whose output rows are query/key/value channels."""
        return [p for p in (self.q, self.k, self.v, self.qkv) if p]

    def stage_of(self, projection):
        """The sparse tool's stage of one of this family's projections, or None."""
        if projection in (*self.ffn_inputs(), self.down):
            return MLP
        if projection == self.o:
            return ATTENTION_OUTPUT
        if projection in self.attention_inputs():
            return QKV
        return None


FAMILIES = (
    Family("bert", model_types=("bert", "roberta", "xlm-roberta", "camembert", "electra", "data2vec-text"),
           q="attention.self.query", k="attention.self.key", v="attention.self.value",
           o="attention.output.dense", up=("intermediate.dense",), down="output.dense",
           norms=("attention.output.LayerNorm", "output.LayerNorm"), attention="attention.self",
           head_attrs=(("num_attention_heads", "heads"), ("all_head_size", "q_channels"))),
    Family("vit", model_types=("vit", "deit", "vit_mae", "dinov2"),
           q="attention.q_proj", k="attention.k_proj", v="attention.v_proj", o="attention.o_proj",
           up=("mlp.fc1",), down="mlp.fc2", norms=("layernorm_before", "layernorm_after"), attention="attention",
           head_attrs=(("num_attention_heads", "heads"),)),
    Family("vit_legacy", model_types=("yolos",),
           q="attention.attention.query", k="attention.attention.key", v="attention.attention.value",
           o="attention.output.dense", up=("intermediate.dense",), down="output.dense",
           norms=("layernorm_before", "layernorm_after"), attention="attention.attention",
           head_attrs=(("num_attention_heads", "heads"), ("all_head_size", "q_channels"))),
    Family("gpt2", model_types=("gpt2",), qkv="attn.c_attn", o="attn.c_proj", up=("mlp.c_fc",), down="mlp.c_proj",
           norms=("ln_1", "ln_2"), attention="attn", head_attrs=(("num_heads", "heads"), ("split_size", "q_channels")),
           ffn_field="n_inner", conv1d=True),
    Family("llama", model_types=("llama", "mistral", "qwen2", "qwen3", "gemma"),
           q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
           up=("mlp.gate_proj", "mlp.up_proj"), down="mlp.down_proj",
           norms=("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm", "pre_mlp_layernorm", "post_mlp_layernorm"), attention="self_attn",
           kv_field="num_key_value_heads", explicit_head_dim=True),
    Family("apertus", model_types=("apertus",), q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
           o="self_attn.o_proj", up=("mlp.up_proj",), down="mlp.down_proj",
           norms=("attention_layernorm", "feedforward_layernorm"), attention="self_attn",
           kv_field="num_key_value_heads", explicit_head_dim=True),
    Family("phi3", model_types=("phi3",), qkv="self_attn.qkv_proj", o="self_attn.o_proj",
           gate_up="mlp.gate_up_proj", down="mlp.down_proj",
           norms=("input_layernorm", "post_attention_layernorm"), attention="self_attn",
           head_attrs=(("num_key_value_heads", "kv_heads"),), heads_in_config=True,
           kv_field="num_key_value_heads"),
    Family("timm_vit", qkv="attn.qkv", o="attn.proj", up=("mlp.fc1",), down="mlp.fc2", norms=("norm1", "norm2"),
           attention="attn", head_attrs=(("num_heads", "heads"),)),
    Family("phi", model_types=("phi",), q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
           o="self_attn.dense", up=("mlp.fc1",), down="mlp.fc2", norms=("input_layernorm",), attention="self_attn",
           kv_field="num_key_value_heads"),
    Family("starcoder2", model_types=("starcoder2",), q="self_attn.q_proj", k="self_attn.k_proj",
           v="self_attn.v_proj", o="self_attn.o_proj", up=("mlp.c_fc",), down="mlp.c_proj",
           norms=("input_layernorm", "post_attention_layernorm"), attention="self_attn",
           kv_field="num_key_value_heads"),
    Family("clip", model_types=("clip_vision_model", "clip_text_model", "siglip_vision_model"),
           q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.out_proj",
           up=("mlp.fc1",), down="mlp.fc2", norms=("layer_norm1", "layer_norm2"), attention="self_attn",
           head_attrs=(("num_heads", "heads"),)),
    Family("opt", model_types=("opt",), q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
           o="self_attn.out_proj", up=("fc1",), down="fc2", norms=("self_attn_layer_norm", "final_layer_norm"),
           attention="self_attn", head_attrs=(("num_heads", "heads"),), ffn_field="ffn_dim"),
)

_LAYER = re.compile(r"^(?P<prefix>.+\.)?(?P<index>\d+)\.(?P<rest>.+)$")


def find_layers(names, family):
    """``{layer prefix: index}`` (e.g. ``{'model.layers.3.': 3}``), in index order, of the layers that hold every
    projection of ``family`` among the qualified module ``names``."""
    present = set(names)
    candidates = {}
    for name in names:
        match = _LAYER.match(name)
        if match:
            candidates[name[: len(name) - len(match["rest"])]] = int(match["index"])
    found = {prefix: index for prefix, index in candidates.items()
             if all(prefix + p in present for p in family.projections())}
    return dict(sorted(found.items(), key=lambda item: item[1]))


def detect_family(names, model_type=None):
    """The :class:`Family` of a model with module ``names`` and its layers ``{prefix: index}``, or ``(None, {})``.

    A family listing ``model_type`` is tried first, so a config decides before the names do.
    """
    preferred = [f for f in FAMILIES if model_type and model_type in f.model_types]
    for family in preferred + [f for f in FAMILIES if f not in preferred]:
        layers = find_layers(names, family)
        if layers:
            return family, layers
    return None, {}


def module_names(parameter_keys):
    """Every module path that the qualified ``parameter_keys`` imply (``a.b.weight`` -> ``a``, ``a.b``), for
    backends that list parameters rather than modules."""
    names = set()
    for key in parameter_keys:
        parts = key.split(".")[:-1]
        names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return sorted(names)


# Names outside the families that still say what a Linear layer does (other architectures, custom models).
_GENERIC_STAGES = (
    (ATTENTION_OUTPUT, ("o_proj", "out_proj")),
    (QKV, ("q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn", "query", "key", "value", "qkv", "Wqkv",
           "query_key_value")),
    (MLP, ("gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2", "w1", "w2", "w3", "c_fc", "fc_in",
           "fc_out", "dense_h_to_4h", "dense_4h_to_h")),
)


def _stage_suffixes():
    """``(suffix, stage)`` of every family projection and generic name, the longest suffix first, so that
    ``attention.output.dense`` wins over the FFN's ``output.dense``."""
    pairs = {}
    for family in FAMILIES:
        for projection in family.projections():
            pairs.setdefault(projection, family.stage_of(projection))
    for stage, names in _GENERIC_STAGES:
        for name in names:
            pairs.setdefault(name, stage)
    return sorted(pairs.items(), key=lambda item: (-len(item[0].split(".")), -len(item[0]), item[0]))


STAGE_SUFFIXES = _stage_suffixes()


def stage_of(name):
    """The progressive-sparsity stage of the Linear layer called ``name``: MLP, attention output, q/k/v, or other."""
    for suffix, stage in STAGE_SUFFIXES:
        if name == suffix or name.endswith("." + suffix):
            return stage
    return OTHER
