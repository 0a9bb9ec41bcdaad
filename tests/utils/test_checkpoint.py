import json
import os

import pytest
import torch
from safetensors.torch import save_file

from msmodelslim.errors import CheckpointError, SchemaValidateError, UnsafeCheckpointError
from msmodelslim.utils import checkpoint as ckpt


@pytest.fixture
def state():
    torch.manual_seed(0)
    return {"encoder.weight": torch.randn(8, 4), "encoder.bias": torch.randn(8), "head.weight": torch.randn(2, 8),
            "steps": torch.tensor(3)}


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".pkl"])
def test_pickle_round_trip(tmp_path, state, suffix):
    path = tmp_path / f"w{suffix}"
    ckpt.save_state_dict(state, path)
    assert_same(ckpt.load_state_dict(path), state)


def test_legacy_torch_format_loads(tmp_path, state):
    path = tmp_path / "legacy.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert_same(ckpt.load_state_dict(str(path)), state)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_unwraps_state_dict_and_model_keys(tmp_path, state, wrapper):
    path = tmp_path / "wrapped.pt"
    torch.save({wrapper: state, "epoch": 3}, path)
    assert_same(ckpt.load_state_dict(path), state)


def test_safetensors_round_trip_and_lazy_access(tmp_path, state):
    path = tmp_path / "w.safetensors"
    ckpt.save_state_dict(state, path)
    assert_same(ckpt.load_state_dict(path), state)
    with ckpt.open_checkpoint(path) as lazy:
        assert sorted(lazy.keys()) == sorted(state)
        assert lazy.shape("head.weight") == (2, 8)
        assert lazy.dtype("encoder.bias") == torch.float32
        assert torch.equal(lazy.get("encoder.weight"), state["encoder.weight"])
        assert "head.weight" in lazy and "nope" not in lazy
        with pytest.raises(KeyError):
            lazy.get("nope")


def test_tied_tensors_are_saved_to_safetensors(tmp_path):
    shared = torch.randn(4, 3)
    path = tmp_path / "tied.safetensors"
    ckpt.save_state_dict({"embed.weight": shared, "lm_head.weight": shared}, path)
    loaded = ckpt.load_state_dict(path)
    assert torch.equal(loaded["embed.weight"], loaded["lm_head.weight"])


def _write_sharded(folder, state, fmt):
    keys = list(state)
    shards = {}
    for i, part in enumerate((keys[:2], keys[2:])):
        name = f"model-0000{i + 1}-of-00002.{'safetensors' if fmt == 'safetensors' else 'bin'}"
        tensors = {k: state[k].contiguous() for k in part}
        if fmt == "safetensors":
            save_file(tensors, folder / name)
        else:
            torch.save(tensors, folder / name)
        shards.update({k: name for k in part})
    index_name = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": shards}))
    return folder / index_name


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_checkpoint_by_index_and_by_directory(tmp_path, state, fmt):
    index = _write_sharded(tmp_path, state, fmt)
    assert_same(ckpt.load_state_dict(index), state)
    assert_same(ckpt.load_state_dict(tmp_path), state)
    with ckpt.open_checkpoint(index) as lazy:
        assert lazy.shape("steps") == ()
        assert sorted(lazy.keys()) == sorted(state)


def test_hf_directory_from_save_pretrained(tmp_path):
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=16))
    model.save_pretrained(tmp_path)
    loaded = ckpt.load_state_dict(tmp_path)
    expected = model.state_dict()
    assert set(loaded) <= set(expected) and len(loaded) >= len(expected) - 1
    for key, value in loaded.items():
        assert torch.equal(value, expected[key])


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as info:
        ckpt.load_state_dict(tmp_path / "absent.pt")
    assert "absent.pt" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="holds no weights.*model.safetensors"):
        ckpt.load_state_dict(tmp_path)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "weights.ckpt"
    path.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"Unsupported checkpoint file .*weights\.ckpt"):
        ckpt.load_state_dict(path)


def test_wrong_path_type():
    with pytest.raises(SchemaValidateError, match="path must be str"):
        ckpt.load_state_dict(123)


def test_truncated_zip_pickle(tmp_path, state):
    good = tmp_path / "good.pt"
    torch.save(state, good)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"bad\.pt.*(corrupt or truncated)"):
        ckpt.load_state_dict(bad)


def test_truncated_legacy_pickle_and_garbage(tmp_path, state):
    good = tmp_path / "good.pt"
    torch.save(state, good, _use_new_zipfile_serialization=False)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ckpt.load_state_dict(bad)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint at all" * 20)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ckpt.load_state_dict(garbage)


def test_truncated_safetensors(tmp_path, state):
    good = tmp_path / "good.safetensors"
    ckpt.save_state_dict(state, good)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*corrupt or truncated"):
        ckpt.load_state_dict(bad)


class _Malicious:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "payload": _Malicious(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError) as info:
        ckpt.load_state_dict(path)
    assert not marker.exists()
    text = str(info.value)
    assert "evil.pt" in text and "safetensors" in text
    assert isinstance(info.value, CheckpointError)


def test_no_tensors(tmp_path):
    path = tmp_path / "empty.pt"
    torch.save({"epoch": 3}, path)
    with pytest.raises(CheckpointError, match="contains no tensors"):
        ckpt.load_state_dict(path)


def test_index_with_missing_shard(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="gone.safetensors.*does not exist"):
        ckpt.load_state_dict(tmp_path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, state, suffix, monkeypatch):
    path = tmp_path / f"model{suffix}"
    ckpt.save_state_dict(state, path)
    before = path.read_bytes()

    class Boom(RuntimeError):
        pass

    def failing_write(tensors, target, *args, **kwargs):
        with open(target, "wb") as handle:
            handle.write(b"partial")
        raise Boom("disk full")

    # make the real writer fail midway, after it has started writing
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", failing_write)
    monkeypatch.setattr(torch, "save", failing_write)
    new_state = {k: v + 1 for k, v in state.items()}
    with pytest.raises(Boom):
        ckpt.save_state_dict(new_state, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_save_rejects_bad_input(tmp_path, state):
    with pytest.raises(SchemaValidateError, match="state_dict must be dict"):
        ckpt.save_state_dict([1], tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="Unsupported file suffix"):
        ckpt.save_state_dict(state, tmp_path / "a.txt")
    with pytest.raises(CheckpointError, match="is not a str -> Tensor pair"):
        ckpt.save_state_dict({"a": 1}, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.save_state_dict(state, tmp_path / "missing" / "a.pt")
