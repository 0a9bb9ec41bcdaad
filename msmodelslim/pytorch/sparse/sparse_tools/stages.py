"""Which Linear layers belong to which stage of progressive sparsification.

The original's order is kept - MLP projections, then the attention output projection, then q/k/v - and the layer
names of Llama/Mistral/Qwen2, GPT-2, OPT, BERT and ViT are recognised; layers no stage names (heads, poolers) are
sparsified in a last stage instead of being left dense.
"""
MLP, ATTENTION_OUTPUT, QKV, OTHER = "mlp", "attention output", "q/k/v", "other"
ORDER = (MLP, ATTENTION_OUTPUT, QKV, OTHER)

# Checked in this order: "attention.output.dense" must be claimed before the MLP's "output.dense".
SUFFIXES = (
    (ATTENTION_OUTPUT, ("o_proj", "attn.c_proj", "self_attn.out_proj", "attention.output.dense", "attn.proj",
                        "out_proj")),
    (QKV, ("q_proj", "k_proj", "v_proj", "attn.c_attn", "c_attn", "attention.self.query", "attention.self.key",
           "attention.self.value", "query", "key", "value", "qkv")),
    (MLP, ("gate_proj", "up_proj", "down_proj", "mlp.c_fc", "mlp.c_proj", "fc1", "fc2", "intermediate.dense",
           "output.dense", "w1", "w2", "w3")),
)


def stage_of(name):
    """The stage of the layer called ``name``."""
    for stage, suffixes in SUFFIXES:
        if any(name == s or name.endswith("." + s) for s in suffixes):
            return stage
    return OTHER
