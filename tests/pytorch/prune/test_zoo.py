"""Real architectures: pruning reaches the parameter target, the model runs, and the desc replays exactly."""
import json

import pytest
import torch

from msmodelslim.pytorch.prune.prune_torch import CallParams, PruneTorch
from zoo import hf
from zoo.registry import UN_PRUNE, ZOO, logits


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("ratio", [0.5, 0.8])
@pytest.mark.parametrize("name", list(ZOO))
def test_prune_reaches_target_runs_and_replays(name, ratio):
    build = ZOO[name]
    model, inputs = build()
    shape = logits(model, inputs).shape
    before = count(model)
    desc = PruneTorch(model, inputs).prune(ratio, UN_PRUNE.get(name))
    assert abs(count(model) / before - ratio) <= 0.02, count(model) / before
    out = logits(model, inputs)
    assert out.shape == shape and torch.isfinite(out).all()

    fresh, _ = build()
    PruneTorch(fresh, inputs).prune_by_desc(json.loads(json.dumps(desc)))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(logits(fresh, inputs), out)


def test_transformer_heads_are_pruned_whole_and_attributes_patched():
    model, batch = hf.llama()
    desc = PruneTorch(model, CallParams(**batch), uniform_layers=False).prune(0.6, un_prune_list=[-1])
    for layer in model.model.layers:
        attn = layer.self_attn
        q, k = attn.q_proj.out_features, attn.k_proj.out_features
        assert q % attn.head_dim == 0 and k % attn.head_dim == 0
        assert q // k == attn.num_key_value_groups  # whole key/value groups with their query heads
    assert desc["__meta__"]["engine"] == "structure:llama"
    assert any(e.get("output", [0, ""])[1].count("x") for n, e in desc.items() if n.endswith("k_proj"))


def test_uniform_transformer_pruning_saves_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    model, batch = hf.llama()
    desc = PruneTorch(model, CallParams(**batch)).prune(0.6)
    sizes = {(l.self_attn.k_proj.out_features, l.mlp.up_proj.out_features) for l in model.model.layers}
    assert len(sizes) == 1  # uniform layers: one config describes them all
    assert {"intermediate_size", "hidden_size"} <= set(desc["__meta__"]["config"])
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, model(**batch).logits, atol=1e-5)


def test_gpt2_fused_qkv_keeps_thirds_aligned():
    model, batch = hf.gpt2()
    PruneTorch(model, CallParams(**batch)).prune(0.6, un_prune_list=[-1])
    for block in model.transformer.h:
        attn = block.attn
        assert attn.c_attn.weight.shape[1] == 3 * attn.split_size == 3 * attn.num_heads * attn.head_dim
        assert attn.c_proj.weight.shape[0] == attn.split_size
