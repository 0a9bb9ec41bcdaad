"""Mixture-of-experts layers whose experts are stored as 3-D tensors (transformers 5): PruneTorch removes neuron
``i`` of every expert together, prunes the hidden size through experts, routers and shared experts, and the pruned
model round-trips through ``save_pretrained``."""
import copy
import logging

import pytest
import torch
import transformers as T

from msmodelslim.pytorch.prune import desc as desc_format
from msmodelslim.pytorch.prune.prune_torch import CallParams, PruneTorch
from msmodelslim.pytorch.prune.structure import StructureEngine, detect_layers

VOCAB = 96


def _qwen3_moe():
    """Every layer is a mixture of experts, routed by a custom module holding a [experts, hidden] weight."""
    cfg = T.Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                           num_key_value_heads=4, head_dim=16, intermediate_size=96, moe_intermediate_size=48,
                           num_experts=4, num_experts_per_tok=2, max_position_embeddings=32)
    return T.Qwen3MoeForCausalLM(cfg)


def _glm4_moe():
    """A dense first layer, then experts with a shared expert (Linear layers) and a grouped router."""
    cfg = T.Glm4MoeConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                          num_key_value_heads=4, head_dim=16, intermediate_size=96, moe_intermediate_size=48,
                          n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, n_shared_experts=1,
                          first_k_dense_replace=1, max_position_embeddings=32, pad_token_id=0, bos_token_id=None,
                          eos_token_id=None)
    return T.Glm4MoeForCausalLM(cfg)


def _mixtral():
    """Every layer is a mixture of experts, and the config sizes the experts with intermediate_size."""
    cfg = T.MixtralConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                          num_key_value_heads=4, head_dim=16, intermediate_size=48, num_local_experts=4,
                          num_experts_per_tok=2, max_position_embeddings=32)
    return T.MixtralForCausalLM(cfg)


def _batch():
    return {"input_ids": torch.randint(2, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))}


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("build", [_qwen3_moe, _glm4_moe, _mixtral], ids=["qwen3_moe", "glm4_moe", "mixtral"])
def test_removing_expert_neurons_equals_silencing_them(build):
    """Removing 8 neurons of every expert gives the dense model with those neurons' down columns zeroed:
    a misaligned gate or up row of the fused [gate | up] tensor would change the logits."""
    torch.manual_seed(0)
    dense = build().eval()
    batch = _batch()
    family, layers, moe = detect_layers(dense)
    assert family is not None and moe
    engine = StructureEngine(dense, family, layers, prune_hidden=False, moe=moe)
    neurons = [1, 4, 7, 10, 13, 16, 19, 22]  # 8: grouped expert products need rows on 16-byte boundaries
    removed = {g: neurons for g, group in enumerate(engine.groups) if group.kind == "moe_ffn"}
    assert removed
    reference = copy.deepcopy(dense)
    with torch.no_grad():
        for part in moe.values():
            for name in part.experts:
                reference.get_submodule(name).down_proj[:, :, neurons] = 0
            for _, down in part.shared:  # sized by the config from the experts: pruned with them
                reference.get_submodule(down).weight[:, neurons] = 0
    patches, fields, _ = engine.patches(removed)
    desc = desc_format.build_desc(dense, engine.groups, removed, engine=engine.engine, patches=patches,
                                  config=fields)
    pruned = copy.deepcopy(dense)
    PruneTorch(pruned, CallParams(**batch)).prune_by_desc(desc)
    experts = pruned.get_submodule(next(iter(next(iter(moe.values())).experts)))
    assert experts.gate_up_proj.shape[1] == 2 * 40 and experts.down_proj.shape[2] == 40
    torch.testing.assert_close(_logits(pruned, batch), _logits(reference, batch), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("build", [_qwen3_moe, _glm4_moe, _mixtral], ids=["qwen3_moe", "glm4_moe", "mixtral"])
def test_a_mixture_of_experts_prunes_to_the_budget_and_reloads(build, tmp_path, caplog):
    torch.manual_seed(0)
    model = build().eval()
    batch = _batch()
    fresh = copy.deepcopy(model)
    before = sum(p.numel() for p in model.parameters())
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        desc = PruneTorch(model, CallParams(**batch)).prune(0.6)
    assert "breaks the model" not in caplog.text and "Protected from pruning" not in caplog.text
    assert abs(sum(p.numel() for p in model.parameters()) / before - 0.6) <= 0.02
    experts = model.get_submodule("model.layers.1.mlp.experts")
    field = "moe_intermediate_size" if hasattr(model.config, "moe_intermediate_size") else "intermediate_size"
    assert model.config.hidden_size < 64 and getattr(model.config, field) == experts.down_proj.shape[2] < 48
    PruneTorch(fresh, CallParams(**batch)).prune_by_desc(desc)
    torch.testing.assert_close(_logits(fresh, batch), _logits(model, batch))
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded, batch), _logits(model, batch))
