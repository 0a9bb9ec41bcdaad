"""The compact sparse export: bit-exact round trip, size, tied weights, a clear error for other files."""
import os

import pytest
import torch
from torch import nn

from msmodelslim.errors import CheckpointError
from msmodelslim.pytorch.sparse.sparse_tools import Compressor, SparseConfig, load_sparse
from msmodelslim.pytorch.sparse.sparse_tools import export
from msmodelslim.utils.checkpoint import save_state_dict


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tensor_round_trip_is_bit_exact(dtype):
    torch.manual_seed(0)
    weight = torch.randn(37, 53).to(dtype)
    weight[torch.rand(37, 53) < 0.6] = 0
    weight[0, 0] = -0.0
    weight[1, 1] = float("nan")
    restored = export.decompress(export.compress(weight))
    assert restored.dtype == dtype
    assert torch.equal(restored.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       weight.view(torch.int16 if dtype != torch.float32 else torch.int32))


def _sparse_model():
    from zoo import hf

    model, batch = hf.llama()
    compressor = Compressor(model, SparseConfig(method="hessian"))
    compressor.compress([batch])
    return model, compressor


def test_export_round_trip_and_size(tmp_path):
    model, compressor = _sparse_model()
    compact = tmp_path / "model.sparse.safetensors"
    dense = tmp_path / "model.safetensors"
    compressor.export(compact)
    save_state_dict(model.state_dict(), dense)
    loaded = load_sparse(compact)
    original = model.state_dict()
    assert set(loaded) == set(original)
    for key, value in original.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    sparse_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if n.endswith("proj.weight"))
    other_bytes = os.path.getsize(dense) - sparse_bytes
    expected = other_bytes + sparse_bytes * (0.5 + 1 / 32)
    assert os.path.getsize(compact) <= expected * 1.02
    assert os.path.getsize(compact) < 0.75 * os.path.getsize(dense)
    fresh = type(model)(model.config)
    fresh.load_state_dict(loaded)
    for name, parameter in fresh.named_parameters():
        assert torch.equal(parameter, dict(model.named_parameters())[name])


def test_tied_weights_are_stored_once(tmp_path):
    embedding = nn.Embedding(100, 16)
    head = nn.Linear(16, 100, bias=False)
    head.weight = embedding.weight
    state = {"embed.weight": embedding.weight.detach(), "head.weight": head.weight.detach()}
    path = tmp_path / "tied.safetensors"
    export.save_sparse(state, path)
    loaded = load_sparse(path)
    assert torch.equal(loaded["head.weight"], state["head.weight"])
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert list(handle.keys()) == ["embed.weight"]


def test_other_files_are_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_state_dict({"w": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="is not a msmodelslim-sparse-bitmask file"):
        load_sparse(path)
