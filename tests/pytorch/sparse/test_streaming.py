"""sparsify_checkpoint: a checkpoint sparsified one block at a time gives the in-memory result bit for bit, with a
fraction of the memory, and leaves nothing behind when it fails."""
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
import transformers as T

from msmodelslim.errors import CheckpointError
from msmodelslim.pytorch.sparse.sparse_tools import Compressor, SparseConfig, load_sparse, sparsify_checkpoint
from msmodelslim.pytorch.sparse.sparse_tools.streaming import streamed_perplexity
from msmodelslim.pytorch.utils.evaluation import perplexity

TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {
    "llama": lambda: T.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "gpt2-tied": lambda: T.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=0, eos_token_id=0),
    "qwen3": lambda: T.Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16),
}


def save_sharded(folder, kind="llama", seed=0):
    torch.manual_seed(seed)
    T.AutoModelForCausalLM.from_config(CONFIGS[kind]()).save_pretrained(folder, max_shard_size="60KB")
    return folder


def calibration(batches=2):
    generator = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 256, (2, 16), generator=generator)} for _ in range(batches)]


def in_memory(source, config, data):
    model = T.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    compressor = Compressor(model, config)
    compressor.compress(data)
    return model, compressor.report()


@pytest.mark.parametrize("kind, options", [
    ("llama", {"method": "hessian"}),
    ("llama", {"method": "magnitude", "uniform": False}),
    ("llama", {"method": "hessian", "pattern": "2:4", "progressive": True}),
    ("gpt2-tied", {"method": "par"}),
    ("qwen3", {"method": "weight_magnitude", "pattern": "1:4"}),
])
def test_streamed_equals_in_memory_bit_for_bit(tmp_path, kind, options):
    source = save_sharded(tmp_path / "source", kind)
    assert len([f for f in os.listdir(source) if f.endswith(".safetensors")]) >= 2
    config, data = SparseConfig(**options), calibration()
    expected, expected_report = in_memory(source, config, data)
    report = sparsify_checkpoint(source, config, tmp_path / "out", data)
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    got = T.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    for name, value in expected.state_dict().items():
        assert torch.equal(got.state_dict()[name], value), name
    assert [(r.name, r.sparsity) for r in report.layers] == [(r.name, r.sparsity) for r in expected_report.layers]
    assert report.timings["io"] > 0 and set(report.timings) == {"forward", "statistics", "solve", "io"}
    compact = load_sparse(out / "model.sparse.safetensors")
    for name, value in got.state_dict().items():
        assert torch.equal(compact[name], value), name
    assert (out / "config.json").exists() and (out / "generation_config.json").exists()


def test_streamed_perplexity_equals_the_whole_model(tmp_path):
    source = save_sharded(tmp_path / "source", "gpt2-tied")
    chunks = torch.randint(0, 256, (6, 20), generator=torch.Generator().manual_seed(2))
    whole = perplexity(T.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32), chunks)
    assert streamed_perplexity(source, chunks) == whole


def test_a_model_with_linear_layers_outside_its_blocks_is_loaded_whole(tmp_path, caplog):
    """OPT with word_embed_proj_dim != hidden_size projects in and out around its blocks."""
    torch.manual_seed(0)
    T.OPTForCausalLM(T.OPTConfig(vocab_size=256, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                 num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=64)
                     ).save_pretrained(tmp_path / "source", max_shard_size="60KB")
    config, data = SparseConfig(method="hessian"), calibration()
    expected, _ = in_memory(tmp_path / "source", config, data)
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        sparsify_checkpoint(tmp_path / "source", config, tmp_path / "out", data)
    assert "outside its repeated blocks" in caplog.text and "project_in" in caplog.text
    got = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    for name, value in expected.state_dict().items():
        assert torch.equal(got.state_dict()[name], value), name


def test_a_family_whose_blocks_are_not_known_to_chain_is_loaded_whole(tmp_path, caplog):
    """GPT-NeoX is no family of ours: nothing proves its blocks feed each other directly, so no streaming."""
    torch.manual_seed(0)
    T.GPTNeoXForCausalLM(T.GPTNeoXConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=64)
                         ).save_pretrained(tmp_path / "source", max_shard_size="60KB")
    config, data = SparseConfig(method="magnitude"), calibration()
    expected, _ = in_memory(tmp_path / "source", config, data)
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        sparsify_checkpoint(tmp_path / "source", config, tmp_path / "out", data)
    assert "not a transformer family" in caplog.text
    got = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    for name, value in expected.state_dict().items():
        assert torch.equal(got.state_dict()[name], value), name


def test_nothing_to_sparsify_copies_the_checkpoint(tmp_path):
    source = save_sharded(tmp_path / "source")
    sparsify_checkpoint(source, SparseConfig(ignore=["re:.*"]), tmp_path / "out", calibration())
    before = T.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).state_dict()
    after = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def _nothing_written(parent, out):
    return not os.path.exists(out) and not [f for f in os.listdir(parent) if f.startswith(".out.")]


def test_a_directory_without_weights_is_refused(tmp_path):
    source = save_sharded(tmp_path / "source")
    for name in os.listdir(source):
        if "safetensors" in name:
            os.remove(source / name)
    with pytest.raises(CheckpointError, match="holds no weights"):
        sparsify_checkpoint(source, SparseConfig(), tmp_path / "out", calibration())
    assert _nothing_written(tmp_path, tmp_path / "out")


def test_a_shard_missing_from_the_index_is_named(tmp_path):
    source = save_sharded(tmp_path / "source")
    missing = sorted(f for f in os.listdir(source) if f.endswith(".safetensors"))[1]
    os.remove(source / missing)
    with pytest.raises(CheckpointError, match=missing):
        sparsify_checkpoint(source, SparseConfig(), tmp_path / "out", calibration())
    assert _nothing_written(tmp_path, tmp_path / "out")


def test_a_truncated_shard_is_named_and_nothing_is_written(tmp_path):
    source = save_sharded(tmp_path / "source")
    shard = source / sorted(f for f in os.listdir(source) if f.endswith(".safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=shard.name):
        sparsify_checkpoint(source, SparseConfig(), tmp_path / "out", calibration())
    assert _nothing_written(tmp_path, tmp_path / "out")


def test_a_tensor_missing_from_the_checkpoint_is_named(tmp_path):
    source = save_sharded(tmp_path / "source")
    index = json.loads((source / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        sparsify_checkpoint(source, SparseConfig(), tmp_path / "out", calibration())
    assert _nothing_written(tmp_path, tmp_path / "out")


def test_an_existing_out_dir_is_never_written_over(tmp_path):
    source = save_sharded(tmp_path / "source")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="out"):
        sparsify_checkpoint(source, SparseConfig(), tmp_path / "out", calibration())
    assert os.listdir(tmp_path / "out") == ["mine.txt"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_run_leaves_nothing(tmp_path, monkeypatch, error):
    """The sixth block call fails (Ctrl-C, or an error), in the third block's turn: two shards were written."""
    source = save_sharded(tmp_path / "source")
    layer = T.models.llama.modeling_llama.LlamaDecoderLayer
    original, calls = layer.forward, []

    def forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise error("stop")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(layer, "forward", forward)
    with pytest.raises(error):
        sparsify_checkpoint(source, SparseConfig(), tmp_path / "out", calibration())
    assert len(calls) > 5
    assert _nothing_written(tmp_path, tmp_path / "out")


MEMORY_SCRIPT = r"""
import json, sys
import torch, transformers as T
from msmodelslim.pytorch.sparse.sparse_tools import Compressor, SparseConfig, sparsify_checkpoint
from zoo.resident import PeakResident

mode, source, out = sys.argv[1:4]
T.LlamaForCausalLM(T.LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                 num_attention_heads=2))  # imports what both paths import, before measuring
data = [{"input_ids": torch.randint(0, 1024, (2, 32))}]
memory = PeakResident()
if mode == "memory":
    model = T.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    Compressor(model, SparseConfig(method="weight_magnitude")).compress(data)
    model.save_pretrained(out)
else:
    sparsify_checkpoint(source, SparseConfig(method="weight_magnitude"), out, data)
print(json.dumps({"extra": memory.above_start()}))
"""


def test_streaming_needs_a_fraction_of_the_in_memory_peak(tmp_path):
    """A ~100 MB checkpoint of 12 blocks: the streamed peak above the starting memory stays under half of the
    in-memory one (measured in the same test, separate processes)."""
    torch.manual_seed(0)
    T.LlamaForCausalLM(T.LlamaConfig(vocab_size=1024, hidden_size=384, intermediate_size=1024, num_hidden_layers=12,
                                     num_attention_heads=6)).save_pretrained(tmp_path / "source")
    script = tmp_path / "measure.py"
    script.write_text(MEMORY_SCRIPT)
    extra = {}
    for mode in ("memory", "stream"):
        proc = subprocess.run([sys.executable, str(script), mode, str(tmp_path / "source"), str(tmp_path / mode)],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                                   "PYTHONPATH": TESTS})
        assert proc.returncode == 0, proc.stderr[-2000:]
        extra[mode] = json.loads(proc.stdout.strip().splitlines()[-1])["extra"]
    size = sum(os.path.getsize(tmp_path / "source" / f) for f in os.listdir(tmp_path / "source"))
    print(f"\ncheckpoint {size / 2**20:.0f} MiB: peak above start in memory {extra['memory'] / 2**20:.0f} MiB, "
          f"streamed {extra['stream'] / 2**20:.0f} MiB")
    assert extra["memory"] > size  # the baseline really holds the model
    assert extra["stream"] < 0.5 * extra["memory"]
