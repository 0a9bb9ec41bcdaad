"""prune_model_weight with MindSpore Cells and .ckpt files: the original's first-N slices and weight importance
equal the torch backend's, bad inputs leave the Cell untouched, and the MindSpore path never imports torch."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

mindspore = pytest.importorskip("mindspore")

from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight  # noqa: E402
from msmodelslim.errors import CheckpointError  # noqa: E402
from zoo.ms_bert import MsBertConfig, MsBertModel, hf_name, save_ckpt  # noqa: E402

LAYER = r"encoder\.layer\.(\d+)\."
LAYER_MAP = {0: 0, 1: 2, 2: 5}
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def _pynative_cpu():
    mindspore.set_context(mode=mindspore.PYNATIVE_MODE)
    mindspore.set_device("CPU")


def tiny_config(**overrides):
    values = dict(vocab_size=64, hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=16)
    return MsBertConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    big = MsBertModel(tiny_config())
    return big, save_ckpt(big, tmp_path_factory.mktemp("tiny") / "big.ckpt")


def config(importance="first", layer_map=None, steps=("prune_blocks", "prune_bert_intra_block")):
    return (PruneConfig().set_steps(list(steps)).add_blocks_params(LAYER, layer_map or LAYER_MAP)
            .set_importance(importance))


def values(cell):
    return {k: p.asnumpy() for k, p in cell.parameters_dict().items()}


def snapshot(cell):
    return {k: (p, p.asnumpy().copy()) for k, p in cell.parameters_dict().items()}


def unchanged(cell, saved):
    """Same Parameter objects holding the same values."""
    params = cell.parameters_dict()
    return sorted(params) == sorted(saved) and all(
        params[k] is p and np.array_equal(p.asnumpy(), value) for k, (p, value) in saved.items())


# ------------------------------------------------------------------------------------------- real MiniLM weights
@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    from msmodelslim import assets
    from zoo.ms_bert import minilm_l6_ms

    folder = tmp_path_factory.mktemp("minilm")
    cell = minilm_l6_ms()
    ckpt = save_ckpt(cell, folder / "minilm.ckpt")
    safetensors = str(folder / "minilm.safetensors")
    mindspore.save_checkpoint(cell, safetensors, format="safetensors")
    return values(cell), ckpt, safetensors, assets.minilm_l6_dir()


def small_pair(directory, **shape):
    import transformers as T

    shape = dict(num_hidden_layers=3, intermediate_size=768, **shape)
    cell = MsBertModel(MsBertConfig.from_json_file(directory / "config.json", **shape))
    return cell, T.BertModel(T.BertConfig.from_pretrained(directory, **shape))


@pytest.mark.slow
def test_first_gives_the_original_slices_and_the_torch_backend_values(minilm):
    big, ckpt, _, directory = minilm
    cell, torch_model = small_pair(directory)
    ms_config, torch_config = config(), config()
    prune_model_weight(cell, ms_config, weight_file_path=ckpt)
    prune_model_weight(torch_model, torch_config, weight_file_path=str(directory))

    reference = torch_model.state_dict()
    got = values(cell)
    assert len(got) == len(reference)
    for key, value in got.items():
        np.testing.assert_allclose(value, reference[hf_name(key)].numpy(), rtol=0, atol=1e-6, err_msg=key)
    for small_id, big_id in LAYER_MAP.items():  # the original's slices, bit for bit
        small, source = f"encoder.layer.{small_id}.", f"encoder.layer.{big_id}."
        assert np.array_equal(got[small + "intermediate.dense.weight"], big[source + "intermediate.dense.weight"][:768])
        assert np.array_equal(got[small + "output.dense.weight"], big[source + "output.dense.weight"][:, :768])
        assert np.array_equal(got[small + "attention.self.query.weight"], big[source + "attention.self.query.weight"])
    assert ms_config.report == torch_config.report


@pytest.mark.slow
@pytest.mark.parametrize("shape", [{}, {"hidden_size": 256, "num_attention_heads": 8}],
                         ids=["ffn-768", "hidden-256-8-heads"])
def test_weight_importance_keeps_the_torch_backend_indices(minilm, shape):
    _, ckpt, _, directory = minilm
    cell, torch_model = small_pair(directory, **shape)
    ms_config, torch_config = config("weight"), config("weight")
    prune_model_weight(cell, ms_config, ckpt)
    prune_model_weight(torch_model, torch_config, str(directory))

    assert ms_config.report == torch_config.report  # heads kept per layer, FFN and hidden counts
    reference = torch_model.state_dict()
    for key, value in values(cell).items():  # equal values imply equal FFN neuron and hidden channel indices
        assert np.array_equal(value, reference[hf_name(key)].numpy()), key
    if shape:
        assert any(heads != list(range(8)) for heads in ms_config.report["heads"].values())


@pytest.mark.slow
def test_mindspore_safetensors_gives_the_same_cell_as_ckpt(minilm):
    _, ckpt, safetensors, directory = minilm
    from_ckpt, _ = small_pair(directory)
    from_safetensors, _ = small_pair(directory)
    prune_model_weight(from_ckpt, config("weight"), ckpt)
    prune_model_weight(from_safetensors, config("weight"), safetensors)
    expected = values(from_ckpt)
    assert all(np.array_equal(v, expected[k]) for k, v in values(from_safetensors).items())


# ------------------------------------------------------------------------------------------- tiny model, bad inputs
def test_tiny_model_first_and_fused_steps_slice_like_the_original(tiny_ckpt):
    big, ckpt = tiny_ckpt
    cell = MsBertModel(tiny_config(num_hidden_layers=3, intermediate_size=48))
    prune_model_weight(cell, config(), ckpt)
    source = values(big)
    got = values(cell)
    assert np.array_equal(got["encoder.layer.2.intermediate.dense.bias"],
                          source["encoder.layer.5.intermediate.dense.bias"][:48])
    assert np.array_equal(got["embeddings.word_embeddings.embedding_table"],
                          source["embeddings.word_embeddings.embedding_table"])

    fused = PruneConfig().set_steps(["prune_blocks", "prune_vit_intra_block"]).add_blocks_params(LAYER, LAYER_MAP)
    fused.set_qkv_keys(["intermediate.dense"])  # any tensor named as fused: thirds of 64 -> 3 x 16
    prune_model_weight(cell, fused, ckpt)
    thirds = [j for i in range(3) for j in range(int(i * 64 / 3), int(i * 64 / 3 + 48 / 3))]
    assert np.array_equal(values(cell)["encoder.layer.1.intermediate.dense.weight"],
                          source["encoder.layer.2.intermediate.dense.weight"][thirds])


def test_two_small_layers_from_one_checkpoint_layer(tiny_ckpt):
    big, ckpt = tiny_ckpt
    cell = MsBertModel(tiny_config(num_hidden_layers=2))
    prune_model_weight(cell, config(layer_map={0: 3, 1: 3}), ckpt)
    got, source = values(cell), values(big)
    for small_id in (0, 1):
        assert np.array_equal(got[f"encoder.layer.{small_id}.output.dense.weight"],
                              source["encoder.layer.3.output.dense.weight"])


def test_a_link_named_ckpt_to_a_file_without_suffix_is_read(tiny_ckpt, tmp_path):
    big, ckpt = tiny_ckpt
    blob = tmp_path / "blob"
    blob.write_bytes(open(ckpt, "rb").read())
    os.chmod(blob, 0o600)
    (tmp_path / "model.ckpt").symlink_to(blob)
    cell = MsBertModel(tiny_config(num_hidden_layers=3))
    prune_model_weight(cell, config(), str(tmp_path / "model.ckpt"))
    assert np.array_equal(values(cell)["encoder.layer.2.output.dense.bias"],
                          values(big)["encoder.layer.5.output.dense.bias"])


def _bad_files(tmp_path, ckpt):
    data = open(ckpt, "rb").read()
    paths = {}
    for name, content in (("truncated.ckpt", data[: len(data) // 2]), ("empty.ckpt", b""), ("weights.pt", data)):
        paths[name] = tmp_path / name
        paths[name].write_bytes(content)
        os.chmod(paths[name], 0o600)
    return paths


def test_bad_files_raise_checkpoint_error_naming_the_file_and_leave_the_cell(tiny_ckpt, tmp_path):
    _, ckpt = tiny_ckpt
    cell = MsBertModel(tiny_config(num_hidden_layers=3, intermediate_size=48))
    saved = snapshot(cell)
    paths = _bad_files(tmp_path, ckpt)
    with pytest.raises(ValueError, match="doesn't exist"):
        prune_model_weight(cell, config(), str(tmp_path / "absent.ckpt"))
    for name, match in (("truncated.ckpt", "cannot read the MindSpore checkpoint"), ("empty.ckpt", "is empty"),
                        ("weights.pt", "must end in .ckpt")):
        with pytest.raises(CheckpointError, match=match) as info:
            prune_model_weight(cell, config(), str(paths[name]))
        assert name in str(info.value)
    with pytest.raises(CheckpointError, match="is a directory"):
        prune_model_weight(cell, config(), str(tmp_path))
    assert unchanged(cell, saved)


def test_a_checkpoint_that_cannot_fill_the_cell_lists_the_keys_and_changes_nothing(tiny_ckpt):
    _, ckpt = tiny_ckpt
    cell = MsBertModel(tiny_config(num_hidden_layers=3, intermediate_size=48))
    saved = snapshot(cell)
    with pytest.raises(ValueError, match="would stay uninitialised") as info:
        prune_model_weight(cell, config(layer_map={0: 0, 1: 2}), ckpt)
    assert "encoder.layer.2.attention.self.query.weight" in str(info.value)
    with pytest.raises(ValueError, match="shape conflict") as info:
        prune_model_weight(cell, config(steps=["prune_blocks"]), ckpt)
    assert "encoder.layer.0.intermediate.dense.weight: checkpoint (64, 32) vs model (48, 32)" in str(info.value)
    assert unchanged(cell, saved)


def test_non_cell_models_and_mixed_frameworks_are_refused(tiny_ckpt):
    _, ckpt = tiny_ckpt
    cell = MsBertModel(tiny_config(num_hidden_layers=3))
    saved = snapshot(cell)
    with pytest.raises(ValueError, match="The model must be a MindSpore or PyTorch model, not dict"):
        prune_model_weight(dict(cell.parameters_dict()), config(), ckpt)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="same framework"):
        prune_model_weight(cell, config().set_importance("weight", model=torch.nn.Linear(2, 2)), ckpt)
    assert unchanged(cell, saved)


def test_a_failing_load_is_undone_exactly(tiny_ckpt, monkeypatch):
    """Fault injection: the load fills every parameter, then is interrupted."""
    _, ckpt = tiny_ckpt
    cell = MsBertModel(tiny_config(num_hidden_layers=3))
    saved = snapshot(cell)
    real_load = mindspore.load_param_into_net

    def load_then_interrupt(net, params, strict_load=False):
        real_load(net, params, strict_load=strict_load)
        raise KeyboardInterrupt

    monkeypatch.setattr(mindspore, "load_param_into_net", load_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prune_model_weight(cell, config(), ckpt)
    assert unchanged(cell, saved)


def test_strict_false_loads_what_fits(tiny_ckpt, caplog):
    big, ckpt = tiny_ckpt
    cell = MsBertModel(tiny_config(num_hidden_layers=3))
    missing = cell.encoder.layer[2].output.dense.weight.asnumpy().copy()
    prune_model_weight(cell, config(layer_map={0: 0, 1: 2}).set_strict(False), ckpt)
    assert "cannot fill the model" in caplog.text
    assert np.array_equal(cell.encoder.layer[2].output.dense.weight.asnumpy(), missing)
    assert np.array_equal(values(cell)["encoder.layer.1.output.dense.weight"],
                          values(big)["encoder.layer.2.output.dense.weight"])


# ------------------------------------------------------------------------------------------- framework isolation
NO_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` raises ImportError from here on
sys.path.insert(0, {tests!r})
import numpy as np
from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
assert "mindspore" not in sys.modules, "the front door imported mindspore"
import mindspore
mindspore.set_context(mode=mindspore.PYNATIVE_MODE)
mindspore.set_device("CPU")
from zoo.ms_bert import MsBertConfig, MsBertModel, save_ckpt
shape = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, max_position_embeddings=16)
big = MsBertModel(MsBertConfig(num_hidden_layers=4, intermediate_size=64, **shape))
path = save_ckpt(big, {ckpt!r})
for importance in ("first", "weight"):
    small = MsBertModel(MsBertConfig(num_hidden_layers=2, intermediate_size=32, **shape))
    config = (PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"])
              .add_blocks_params(r"encoder\\.layer\\.(\\d+)\\.", {{0: 1, 1: 3}}).set_importance(importance))
    prune_model_weight(small, config, path)
    assert np.array_equal(small.encoder.layer[1].attention.self.key.weight.asnumpy(),
                          big.encoder.layer[3].attention.self.key.weight.asnumpy())
assert sys.modules["torch"] is None
print("ok")
"""


def test_the_mindspore_path_runs_where_torch_cannot_be_imported(tmp_path):
    script = NO_TORCH.format(tests=TESTS, ckpt=str(tmp_path / "big.ckpt"))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
