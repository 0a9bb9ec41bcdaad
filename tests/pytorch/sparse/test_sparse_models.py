"""The sparse tool on transformer models: Hugging Face batches, block-by-block calibration, real perplexity."""
import math

import pytest
import torch

from msmodelslim import assets
from msmodelslim.pytorch.sparse.sparse_tools import Compressor, SparseConfig
from msmodelslim.pytorch.utils.evaluation import perplexity
from zoo import hf


def linear_sparsity(model):
    return {name: (m.weight == 0).float().mean().item() for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and "lm_head" not in name}


@pytest.mark.parametrize("method", ["magnitude", "hessian", "par", "par_v2", "weight_magnitude"])
def test_tiny_llama_every_method(method):
    model, batch = hf.llama()
    second = {"input_ids": torch.randint(0, 512, (2, 16))}
    Compressor(model, SparseConfig(method=method)).compress([batch, second])
    assert all(abs(s - 0.5) < 1e-6 for s in linear_sparsity(model).values())
    assert (model.lm_head.weight == 0).float().mean() < 0.01
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_block_by_block_matches_the_sequential_definition():
    """Block 1's statistics come from block 0 *after* block 0 was sparsified."""
    model, batch = hf.llama()
    reference, _ = hf.llama()
    reference.load_state_dict(model.state_dict())
    Compressor(model, SparseConfig()).compress([batch])
    # redo by hand: sparsify block 0 of the reference, then compute block 1's inputs with the model itself
    from msmodelslim.pytorch.sparse.sparse_tools.methods import wanda
    from msmodelslim.pytorch.sparse.sparse_tools.methods.masks import score_mask
    from msmodelslim.pytorch.sparse.sparse_tools.stats import LayerStats

    with torch.no_grad():
        for name, module in reference.model.layers[0].named_modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(dict(model.model.layers[0].named_modules())[name].weight)
    captured = {}
    handle = reference.model.layers[1].self_attn.q_proj.register_forward_hook(
        lambda m, i, o: captured.setdefault("x", i[0]))
    with torch.no_grad():
        reference(**batch)
    handle.remove()
    stats = LayerStats("q", 128, "cpu")
    stats.add(captured["x"])
    expected = score_mask(wanda.scores(reference.model.layers[1].self_attn.q_proj.weight.detach(), stats), 0.5)
    assert torch.equal(model.model.layers[1].self_attn.q_proj.weight == 0, expected)


@pytest.mark.slow
def test_minilm_with_a_tokenized_batch():
    model, tokenizer = assets.minilm_l6()
    train, _ = assets.wiki_split()
    batch = dict(tokenizer(train[:8], padding=True, truncation=True, max_length=64, return_tensors="pt"))
    compressor = Compressor(model, SparseConfig(method="par_v2", sparse_ratio=0.6))
    compressor.compress([batch])
    sparsity = linear_sparsity(model)
    assert len(sparsity) == 36 + 1  # 6 layers x 6 projections + the pooler
    assert all(abs(s - 0.6) < 0.01 for s in sparsity.values())
    with torch.no_grad():
        assert torch.isfinite(model(**batch).last_hidden_state).all()


@pytest.mark.slow
def test_smollm2_hessian_beats_weight_magnitude():
    path = assets.smollm2_135m_dir()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    calibration = [{"input_ids": c} for c in assets.wiki_token_chunks(tokenizer, "train", 4, 256).split(2)]
    evaluation = assets.wiki_token_chunks(tokenizer, "test", 2, 256)
    results = {}
    for method in ("hessian", "weight_magnitude"):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        Compressor(model, SparseConfig(method=method)).compress(calibration)
        results[method] = perplexity(model, evaluation)
    print(f"\nSmolLM2-135M at 50 %: perplexity {results}")
    assert math.isfinite(results["hessian"]) and results["hessian"] < results["weight_magnitude"]


@pytest.mark.parametrize("true_sequential", [False, True])
def test_true_sequential_calibrates_o_proj_on_the_sparsified_q_k_v(true_sequential):
    from msmodelslim.pytorch.sparse.sparse_tools.methods import wanda
    from msmodelslim.pytorch.sparse.sparse_tools.methods.masks import score_mask
    from msmodelslim.pytorch.sparse.sparse_tools.stats import LayerStats

    model, batch = hf.llama()
    reference, _ = hf.llama()
    reference.load_state_dict(model.state_dict())
    Compressor(model, SparseConfig(true_sequential=true_sequential)).compress([batch])
    attention = reference.model.layers[0].self_attn
    if true_sequential:  # o_proj must have seen the attention output of the sparse q/k/v
        with torch.no_grad():
            for name in ("q_proj", "k_proj", "v_proj"):
                getattr(attention, name).weight.copy_(getattr(model.model.layers[0].self_attn, name).weight)
    captured = {}
    handle = attention.o_proj.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    with torch.no_grad():
        reference(**batch)
    handle.remove()
    stats = LayerStats("o", captured["x"].shape[-1], "cpu")
    stats.add(captured["x"])
    expected = score_mask(wanda.scores(attention.o_proj.weight.detach(), stats), 0.5)
    assert torch.equal(model.model.layers[0].self_attn.o_proj.weight == 0, expected)
