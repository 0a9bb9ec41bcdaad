"""The msmodelslim command line, end to end in subprocesses with real files."""
import json
import os
import struct
import subprocess
import sys

import pytest
import torch

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(os.path.dirname(sys.executable), "msmodelslim")


def cli(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": TESTS, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=env)


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("command", [[], ["sparse"], ["prune-transformer"], ["prune"], ["slim"], ["demo"]])
def test_help(command):
    proc = cli(*command, "--help")
    assert proc.returncode == 0 and "usage: msmodelslim" in proc.stdout
    assert "--out" in proc.stdout or not command


def test_prune_end_to_end(tmp_path):
    out = tmp_path / "pruned"
    proc = cli("prune", "zoo.cnn:small_resnet", "--input-shape", "1,3,64,64", "--ratio", "0.6", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "parameters:" in proc.stdout
    desc = json.loads((out / "desc.json").read_text())
    assert "MACs" in (out / "summary.md").read_text()
    sys.path.insert(0, TESTS)
    from msmodelslim.pytorch.prune.prune_torch import PruneTorch
    from msmodelslim.utils.checkpoint import load_state_dict
    from zoo.cnn import small_resnet

    fresh = small_resnet().eval()
    full = sum(p.numel() for p in fresh.parameters())
    PruneTorch(fresh, torch.randn(1, 3, 64, 64)).prune_by_desc(desc)
    fresh.load_state_dict(load_state_dict(out / "model.safetensors"))
    assert abs(sum(p.numel() for p in fresh.parameters()) / full - 0.6) <= 0.02


def test_prune_transformer_end_to_end(tmp_path):
    from transformers import BertConfig, BertModel

    from msmodelslim import assets

    config = BertConfig.from_pretrained(assets.minilm_l6_dir())
    config.num_hidden_layers, config.intermediate_size = 3, 768
    small_config = tmp_path / "small.json"
    small_config.write_text(config.to_json_string())
    out = tmp_path / "small"
    proc = cli("prune-transformer", str(assets.minilm_l6_dir()), "--small-config", str(small_config),
               "--layer-map", "0:0,1:2,2:5", "--importance", "weight", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    model = BertModel.from_pretrained(out)
    assert model.config.num_hidden_layers == 3 and model.encoder.layer[0].intermediate.dense.out_features == 768
    report = json.loads((out / "prune_report.json").read_text())
    assert report["kept"]["layers"] == {"0": 0, "1": 2, "2": 5}
    assert (out / "tokenizer.json").exists() or (out / "vocab.txt").exists()


def test_prune_transformer_auto_layer_map(tmp_path):
    from transformers import BertConfig, BertModel

    from msmodelslim import assets

    config = BertConfig.from_pretrained(assets.minilm_l6_dir())
    config.num_hidden_layers = 2
    small_config = tmp_path / "small.json"
    small_config.write_text(config.to_json_string())
    out = tmp_path / "small"
    proc = cli("prune-transformer", str(assets.minilm_l6_dir()), "--small-config", str(small_config),
               "--steps", "prune_blocks", "--layer-map", "auto", "--calib-samples", "8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    layers = json.loads((out / "prune_report.json").read_text())["kept"]["layers"]
    assert list(layers) == ["0", "1"] and layers["0"] < layers["1"] <= 5
    assert BertModel.from_pretrained(out).config.num_hidden_layers == 2


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    """A tiny random Llama that speaks SmolLM2's tokenizer, saved as a Hugging Face directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from msmodelslim import assets

    folder = tmp_path_factory.mktemp("tiny-llm")
    tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_135m_dir())
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                         tie_word_embeddings=True))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_sparse_end_to_end(tmp_path, tiny_llm):
    from transformers import AutoModelForCausalLM

    from msmodelslim.pytorch.sparse.sparse_tools import load_sparse

    calib = tmp_path / "calib.jsonl"
    calib.write_text("\n".join(json.dumps({"text": f"Sentence number {i} about pruning models."}) for i in range(40)))
    out = tmp_path / "sparse"
    proc = cli("sparse", str(tiny_llm), "--method", "hessian", "--ratio", "0.5", "--pattern", "2:4", "--calib",
               str(calib), "--samples", "2", "--seq-len", "32", "--eval-samples", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = (out / "report.md").read_text()
    assert "perplexity on 2 x 32 held-out Wikipedia tokens" in report and "model.layers.1.mlp.down_proj" in report
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    weight = model.model.layers[0].mlp.down_proj.weight
    assert ((weight == 0).reshape(weight.shape[0], -1, 4).sum(-1) == 2).all()
    compact = load_sparse(out / "model.sparse.safetensors")
    for name, value in model.state_dict().items():
        assert torch.equal(compact[name], value), name
    # a directory is streamed: one shard per block and one for the rest, and the report says where the time went
    index = json.loads((out / "model" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    assert "- time: forward" in report and "not the forward pass faster" in report


def test_sparse_names_a_truncated_shard_and_writes_nothing(tmp_path, tiny_llm):
    import shutil

    source = tmp_path / "sharded"
    shutil.copytree(tiny_llm, source)
    shard = source / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    proc = cli("sparse", str(source), "--samples", "2", "--seq-len", "32", "--eval-samples", "2", "--out",
               str(tmp_path / "bad"))
    assert proc.returncode == 2 and "model.safetensors" in error_lines(proc)[-1], proc.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_sparse_from_a_gguf_file(tmp_path):
    from msmodelslim import assets

    gguf = assets.package_file(assets.SMOLLM2, ".gguf")
    out = tmp_path / "from-gguf"
    proc = cli("sparse", str(gguf), "--method", "magnitude", "--samples", "2", "--seq-len", "64", "--eval-samples",
               "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "model" / "config.json").exists() and (out / "model.sparse.safetensors").exists()


@pytest.mark.parametrize("args", [
    ["sparse", "/nonexistent/model", "--out", "{out}"],
    ["sparse", "/nonexistent/model", "--method", "shrink", "--out", "{out}"],
    ["prune", "zoo.cnn:small_resnet", "--input-shape", "1,3,8,8", "--ratio", "1.5", "--out", "{out}"],
    ["prune", "zoo.cnn:small_resnet", "--input-shape", "1x3", "--ratio", "0.5", "--out", "{out}"],
    ["prune", "zoo.cnn:nothing_here", "--input-shape", "1,3,8,8", "--ratio", "0.5", "--out", "{out}"],
    ["prune-transformer", "{tests}", "--small-config", "{tests}", "--layer-map", "0-0,1:2", "--out", "{out}"],
    ["prune-transformer", "/nonexistent.pt", "--small-config", "{tests}", "--layer-map", "0:0", "--out", "{out}"],
])
def test_user_mistakes_exit_2_with_one_line_and_no_output(tmp_path, args):
    out = tmp_path / "out"
    proc = cli(*[a.format(out=out, tests=TESTS) for a in args])
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and "error" in lines[0], proc.stderr
    assert not out.exists() and os.listdir(tmp_path) == []


def test_internal_failure_exits_1_and_verbose_shows_the_traceback(tmp_path):
    out = tmp_path / "out"
    proc = cli("prune", "zoo.cnn:broken_factory", "--input-shape", "1,3,8,8", "--ratio", "0.5", "--out", str(out))
    assert proc.returncode == 1
    assert error_lines(proc) == [line for line in error_lines(proc) if "internal error" in line]
    assert "the factory failed" in proc.stderr and not out.exists()
    verbose = cli("--verbose", "prune", "zoo.cnn:broken_factory", "--input-shape", "1,3,8,8", "--ratio", "0.5",
                  "--out", str(out))
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def _is_png(path):
    with open(path, "rb") as handle:
        header = handle.read(24)
    if header[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    width, height = struct.unpack(">II", header[16:24])
    return width > 100 and height > 100


@pytest.mark.slow
def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    proc = cli("demo", "--quick", "--out", str(out), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["distillation_accuracy.png", "efficientnet_before_after.png", "perplexity_per_method.png",
                    "sparsity_per_layer.png"]
    for name in pngs:
        assert _is_png(out / name) and f"]({name})" in report
    from PIL import Image

    for name in pngs:
        with Image.open(out / name) as image:
            image.verify()
    assert "SmolLM2-135M perplexity" in proc.stdout and "EfficientNet-Lite0 parameters" in report
