"""The capabilities on a CUDA device (skipped where there is none): work happens where the model is."""
import json

import pytest
import torch

from msmodelslim.common.knowledge_distill.knowledge_distill import get_distill_model
from msmodelslim.pytorch.prune.prune_torch import CallParams, PruneTorch
from msmodelslim.pytorch.sparse.sparse_tools import Compressor, SparseConfig, load_sparse
from zoo import cnn, hf
from zoo.distill_pair import logits_and_hidden_config, tiny_bert_pair

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def to_cuda(batch):
    return {k: v.to(CUDA) for k, v in batch.items()}


def test_prune_torch_generic_and_transformer_models_on_cuda():
    torch.manual_seed(0)
    model = cnn.resnet18(10).eval().to(CUDA)
    x = torch.randn(2, 3, 64, 64, device=CUDA)
    before = sum(p.numel() for p in model.parameters())
    desc = PruneTorch(model, x).prune(0.5)
    assert abs(sum(p.numel() for p in model.parameters()) / before - 0.5) <= 0.02
    assert all(p.device.type == "cuda" for p in model.parameters())
    fresh = cnn.resnet18(10).eval().to(CUDA)
    PruneTorch(fresh, x).prune_by_desc(json.loads(json.dumps(desc)))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    llama, batch = hf.llama()
    llama = llama.to(CUDA)
    PruneTorch(llama, CallParams(**to_cuda(batch))).prune(0.6)
    with torch.no_grad():
        assert torch.isfinite(llama(**to_cuda(batch)).logits).all()


@pytest.mark.parametrize("method", ["magnitude", "hessian", "par_v2"])
def test_sparse_on_cuda_matches_cpu(method):
    cpu_model, batch = hf.llama()
    cuda_model, _ = hf.llama()
    cuda_model.load_state_dict(cpu_model.state_dict())
    cuda_model = cuda_model.to(CUDA)
    Compressor(cpu_model, SparseConfig(method=method)).compress([batch])
    Compressor(cuda_model, SparseConfig(method=method)).compress([to_cuda(batch)])
    for (name, a), (_, b) in zip(cpu_model.named_parameters(), cuda_model.named_parameters()):
        assert b.device.type == "cuda"
        if name.endswith("proj.weight"):
            agreement = ((a == 0) == (b.cpu() == 0)).float().mean().item()
            assert agreement > 0.98, (name, agreement)
            assert abs((b == 0).float().mean().item() - 0.5) < 1e-6


def test_export_from_cuda(tmp_path):
    model, batch = hf.llama()
    model = model.to(CUDA)
    compressor = Compressor(model, SparseConfig(method="hessian"))
    compressor.compress([to_cuda(batch)])
    compressor.export(tmp_path / "m.sparse.safetensors")
    loaded = load_sparse(tmp_path / "m.sparse.safetensors")
    for name, value in model.state_dict().items():
        assert torch.equal(loaded[name], value.cpu()), name


def test_distillation_on_cuda_keeps_the_teacher_fp32():
    teacher, student = (m.to(CUDA) for m in tiny_bert_pair())
    config = logits_and_hidden_config()
    model = get_distill_model(teacher, student, config)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    ids = torch.randint(0, 100, (4, 12), device=CUDA)
    loss, _, _ = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    loss.backward()
    optimizer.step()
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in teacher.parameters())
    assert model.adaptors["inter0"].weight.device.type == "cuda"


def test_prune_model_weight_with_activation_importance_on_cuda(tmp_path):
    import transformers as T

    from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
    from msmodelslim.utils.checkpoint import save_state_dict

    big, batch = hf.llama()
    save_state_dict(big.state_dict(), tmp_path / "big.safetensors")
    config = big.config.to_dict()
    config.update(intermediate_size=192, num_hidden_layers=1)
    small = T.LlamaForCausalLM(T.LlamaConfig(**{k: v for k, v in config.items() if k != "architectures"})).to(CUDA)
    prune_config = PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"]).add_blocks_params(
        r"model\.layers\.(\d+)\.", {0: 1}).set_importance("activation", [to_cuda(batch)], model=big.to(CUDA))
    prune_model_weight(small, prune_config, str(tmp_path / "big.safetensors"))
    assert prune_config.report["ffn"]["model.layers.0."] == [192, 384]
    with torch.no_grad():
        assert torch.isfinite(small(**to_cuda(batch)).logits).all()


def test_sparsify_checkpoint_streams_blocks_through_the_gpu(tmp_path):
    """Each block goes to the GPU for its turn; the result matches the in-memory run on the GPU (same masks)."""
    import transformers as T

    from msmodelslim.pytorch.sparse.sparse_tools import sparsify_checkpoint

    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2)
    T.LlamaForCausalLM(config).save_pretrained(tmp_path / "source", max_shard_size="60KB")
    data = [{"input_ids": torch.randint(0, 256, (2, 16))}]
    sparsify_checkpoint(tmp_path / "source", SparseConfig(method="hessian"), tmp_path / "out", data, device="cuda")
    model = T.AutoModelForCausalLM.from_pretrained(tmp_path / "source").to(CUDA)
    Compressor(model, SparseConfig(method="hessian")).compress([to_cuda(b) for b in data])
    streamed = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    for name, value in model.state_dict().items():
        if name.endswith("proj.weight"):
            assert torch.equal(streamed.state_dict()[name] == 0, value.cpu() == 0), name


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_sparsegpt_graph_replay_gives_the_op_by_op_result(pattern, monkeypatch):
    """The column loop replayed from a CUDA graph computes exactly what the op-by-op loop computes."""
    from msmodelslim.pytorch.sparse.sparse_tools.methods import sparsegpt

    results = []
    for graphs in (True, False):
        monkeypatch.setattr(sparsegpt, "USE_CUDA_GRAPHS", graphs)
        torch.manual_seed(0)
        model, batch = hf.llama()
        model = model.to(CUDA)
        Compressor(model, SparseConfig(method="hessian", **({"pattern": pattern} if pattern else {}))).compress(
            [to_cuda(batch)])
        results.append(model.state_dict())
    assert any(isinstance(s, sparsegpt._CapturedSweep) for s in sparsegpt._captured.values())
    for name, value in results[0].items():
        assert torch.equal(value, results[1][name]), name


def test_two_four_model_runs_on_semi_structured_kernels():
    from msmodelslim.pytorch.sparse.sparse_tools import to_semi_structured

    torch.manual_seed(0)
    model, batch = hf.llama()
    model = model.to(CUDA)
    Compressor(model, SparseConfig(method="hessian", pattern="2:4")).compress([to_cuda(batch)])
    model = model.half().eval()
    with torch.no_grad():
        dense = model(**to_cuda(batch)).logits.float()
        report = to_semi_structured(model, skip=["lm_head"])
        sparse = model(**to_cuda(batch)).logits.float()
    assert report.converted and all(name.endswith("proj") for name in report.converted)
    assert "lm_head" not in report.converted and "lm_head" not in report.skipped
    assert torch.allclose(dense, sparse, atol=2e-2, rtol=2e-2), (dense - sparse).abs().max()


def test_semi_structured_backend_either_runs_or_leaves_every_layer_dense():
    """PyTorch's CUTLASS kernels are built for capability 8.x only: elsewhere nothing is converted, with the reason."""
    from msmodelslim.pytorch.sparse.sparse_tools import to_semi_structured

    model, batch = hf.llama()
    model = model.to(CUDA)
    Compressor(model, SparseConfig(method="magnitude", pattern="2:4")).compress([to_cuda(batch)])
    model = model.half().eval()
    with torch.no_grad():
        dense = model(**to_cuda(batch)).logits.float()
        report = to_semi_structured(model, backend="cutlass", skip=["lm_head"])
        after = model(**to_cuda(batch)).logits.float()
    if report.converted:
        assert torch.allclose(dense, after, atol=2e-2, rtol=2e-2)
    else:
        assert all("backend does not run here" in reason for reason in report.skipped.values())
        assert torch.equal(dense, after)


def _word_tokenizer(words):
    """A whitespace word-level tokenizer built in memory (the GPU machine has no tokenizer files)."""
    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(words)}},
                                         unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


def test_slim_on_cuda_meets_a_latency_budget():
    """slim_model with the teacher on the GPU: candidates timed with CUDA synchronisation, bf16-autocast training,
    the slim model left on the GPU."""
    import random

    import transformers as T

    from msmodelslim.common.slim import SlimConfig, slim_model

    words = [f"w{i}" for i in range(200)]
    tokenizer = _word_tokenizer(words)
    generator = random.Random(0)
    texts = [" ".join(generator.choice(words) for _ in range(80)) for _ in range(120)]
    torch.manual_seed(0)
    teacher = T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=len(words) + 2, hidden_size=256, intermediate_size=1024, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=128)).to(CUDA)
    config = SlimConfig(budget=0.5, budget_kind="latency", tolerance=0.1, train_tokens=8 * 4 * 64, seq_len=64,
                        batch_size=4, align=32, max_candidates=3, top_k=1, calib_samples=4, eval_samples=4,
                        learning_rate=1e-3)
    result = slim_model(teacher, config, data=texts, tokenizer=tokenizer)
    assert next(result.model.parameters()).device.type == "cuda"
    assert result.candidates and all(abs(row["fraction"] - 0.5) <= 0.1 for row in result.candidates)
    assert abs(result.metrics["fraction"] - 0.5) <= 0.2, result.metrics["fraction"]
    assert all(torch.isfinite(torch.tensor(result.history["loss"])))
