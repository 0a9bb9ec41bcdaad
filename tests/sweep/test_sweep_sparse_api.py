"""Replay of the bad-input sweep (2026-11-26) for the sparse tool's API: SparseConfig (B01-B06), Compressor.compress
(C01-C11, S32) and the sparse export / checkpoint readers (F01-F08). Each test id starts with the sweep's row id."""
import os
import re

import numpy
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from msmodelslim.errors import CheckpointError
from msmodelslim.pytorch.sparse.sparse_tools import Compressor, SparseConfig, load_sparse
from msmodelslim.utils.checkpoint import load_state_dict, save_state_dict
from sparse_sweep_helpers import (Chain, Fault, Tied, assert_identical, batches, captured_log, count_calls,
                                  export_small, fail_module_on_call, llama_batches, read_raw, rewrite, same_bits,
                                  snapshot, split_file, join_file, tiny_llama)

# ------------------------------------------------------------------------------------------- B: SparseConfig
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("kwargs, error, match", [
    pytest.param({"sparse_ratio": 1}, TypeError, "sparse_ratio is invalid", id="B01-ratio-int-1"),
    pytest.param({"sparse_ratio": "0.5"}, TypeError, "sparse_ratio is invalid", id="B01-ratio-str"),
    pytest.param({"sparse_ratio": NAN}, ValueError, "sparse_ratio should be between 0 and 1", id="B01-ratio-nan"),
    pytest.param({"method": None}, ValueError, "optimizer should be in", id="B01-method-None"),
    pytest.param({"mode": "dense"}, ValueError, "mode should be 'sparse'", id="B01-mode-dense"),
    pytest.param({"progressive": "yes"}, TypeError, "progressive is invalid", id="B01-progressive-str"),
    pytest.param({"uniform": 0}, TypeError, "uniform is invalid", id="B01-uniform-int"),
    pytest.param({"pattern": 24}, ValueError, "pattern must be .*24", id="B02-pattern-int"),
    pytest.param({"pattern": " 2:4"}, ValueError, "pattern must be .*' 2:4'", id="B02-pattern-space"),
    pytest.param({"ignore": "lm_head"}, TypeError, "ignore must be a list", id="B02-ignore-str"),
    pytest.param({"ignore": ["re:("]}, ValueError, r"ignore pattern 're:\(' is not a valid", id="B02-ignore-regex"),
    pytest.param({"blocksize": 0}, ValueError, "blocksize must be an int >= 1, got 0", id="B02-blocksize-0"),
    pytest.param({"percdamp": NAN}, ValueError, r"percdamp must be a number in \(0, 1\), got nan",
                 id="B02-percdamp-nan"),
    pytest.param({"max_swaps": -1}, ValueError, "max_swaps must be a non-negative int or None, got -1",
                 id="B02-max_swaps-negative"),
    pytest.param({"true_sequential": "yes"}, TypeError, r"true_sequential must be a bool, got 'yes' \(str\)",
                 id="B03-true_sequential-str"),
    pytest.param({"owl_lambda": "abc"}, TypeError, r"owl_lambda must be a number in \[0, 0.5\), got 'abc' \(str\)",
                 id="B03-owl_lambda-str"),
    pytest.param({"owl_lambda": None}, TypeError, r"owl_lambda must be .*got None \(NoneType\)",
                 id="B03-owl_lambda-None"),
    pytest.param({"method": "par_v2", "swap_threshold": "abc"}, TypeError,
                 r"swap_threshold must be a finite number >= 0 or None, got 'abc' \(str\)",
                 id="B04-swap_threshold-str"),
    pytest.param({"uniform": False, "owl_m": NAN}, ValueError, "owl_m must be a finite number > 0, got nan",
                 id="B05-owl_m-nan"),
    pytest.param({"uniform": False, "owl_m": INF}, ValueError, "owl_m must be a finite number > 0, got inf",
                 id="B05-owl_m-inf"),
    pytest.param({"method": "par_v2", "swap_threshold": NAN}, ValueError, "swap_threshold must be .*got nan",
                 id="B05-swap_threshold-nan"),
    pytest.param({"owl_lambda": INF}, ValueError, "owl_lambda must be .*got inf", id="B05-owl_lambda-inf"),
    pytest.param({"owl_lambda": 0.5}, ValueError, "owl_lambda must be .*got 0.5", id="B05-owl_lambda-range"),
    pytest.param({"owl_m": -1.0}, ValueError, "owl_m must be .*got -1.0", id="B05-owl_m-negative"),
    pytest.param({"percdamp": INF}, ValueError, "percdamp must be .*got inf", id="B05-percdamp-inf"),
    pytest.param({"percdamp": "0.01"}, TypeError, r"percdamp must be .*'0.01' \(str\)", id="B05-percdamp-str"),
    pytest.param({"swap_threshold": -0.5}, ValueError, "swap_threshold must be .*got -0.5",
                 id="B05-swap_threshold-negative"),
    pytest.param({"swap_threshold": INF}, ValueError, "swap_threshold must be .*got inf", id="B05-swap_threshold-inf"),
    pytest.param({"max_swaps": 1.5}, TypeError, r"max_swaps must be .*got 1.5 \(float\)", id="B05-max_swaps-float"),
    pytest.param({"max_swaps": "3"}, TypeError, r"max_swaps must be .*got '3' \(str\)", id="B05-max_swaps-str"),
    pytest.param({"blocksize": 128.0}, TypeError, r"blocksize must be .*got 128.0 \(float\)",
                 id="B05-blocksize-float"),
    # B06 was accepted silently; decided: a bool is not an int here, and the pattern must be exactly "N:M".
    pytest.param({"blocksize": True}, TypeError, r"blocksize must be an int >= 1, got True \(bool\)",
                 id="B06-blocksize-bool"),
    pytest.param({"max_swaps": False}, TypeError, r"max_swaps must be .*got False \(bool\)", id="B06-max_swaps-bool"),
    pytest.param({"pattern": "2:4\n"}, ValueError, r"pattern must be .*'2:4\\n'", id="B06-pattern-newline"),
])
def test_sparse_config_refuses_bad_values_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        SparseConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [
    pytest.param({"owl_lambda": 0, "owl_m": 3}, id="B05-ok-ints"),
    pytest.param({"percdamp": numpy.float64(0.05), "blocksize": numpy.int64(64)}, id="B05-ok-numpy"),
    pytest.param({"method": "par_v2", "max_swaps": 0, "swap_threshold": 0}, id="B05-ok-zero"),
    pytest.param({"pattern": "3:7"}, id="B05-ok-pattern"),
])
def test_sparse_config_accepts_good_values(kwargs):
    cfg = SparseConfig(**kwargs)
    for key, value in kwargs.items():
        assert getattr(cfg, key) == value


# ------------------------------------------------------------------------------------------- C: compress
def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("l1", nn.Linear(16, 32))
    model.add_module("act", nn.ReLU())
    model.add_module("l2", nn.Linear(32, 8))
    return model


@pytest.mark.parametrize("bad_index", [pytest.param(0, id="C01-nan-batch-0"), pytest.param(2, id="C01-nan-batch-2")])
def test_nan_batch_names_the_layer_and_changes_nothing(bad_index):
    model = _mlp()
    snap = snapshot(model)
    data = [torch.randn(4, 16) for _ in range(3)]
    data[bad_index][1, 3] = NAN
    with pytest.raises(ValueError, match=r"layer 'l1'.*NaN or inf"):
        Compressor(model, SparseConfig()).compress(data)
    assert_identical(model, snap)


@pytest.mark.parametrize("bad", [
    pytest.param(lambda: torch.randn(4, 16, dtype=torch.float64), id="C02-float64"),
    pytest.param(lambda: torch.randn(4, 16, device="meta"), id="C02-meta"),
    pytest.param(lambda: torch.randn(4, 50), id="C02-width-50"),
    pytest.param(lambda: torch.ones(4, 16, dtype=torch.int64), id="C02-int"),
])
def test_batch_the_model_cannot_run_is_named(bad):
    model = _mlp()
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match=r"dataset\[1\]: the model failed on this batch"):
        Compressor(model, SparseConfig()).compress([torch.randn(4, 16), bad()])
    assert_identical(model, snap)


@pytest.mark.parametrize("dataset, error, match", [
    pytest.param(lambda: [torch.randn(4, 16), "hello"], TypeError, r"dataset\[1\] must be a Tensor, list, tuple",
                 id="C03-str-batch"),
    pytest.param(lambda: (torch.randn(4, 16),), TypeError, "dataset must be list, not tuple", id="C03-tuple"),
    pytest.param(lambda: torch.utils.data.DataLoader([torch.randn(16)] * 4, batch_size=2), TypeError,
                 "dataset must be list, not DataLoader", id="C03-dataloader"),
    pytest.param(lambda: [], ValueError, "dataset is empty", id="C03-empty"),
])
def test_bad_dataset_is_refused_before_anything_changes(dataset, error, match):
    model = _mlp()
    snap = snapshot(model)
    with pytest.raises(error, match=match):
        Compressor(model, SparseConfig()).compress(dataset())
    assert_identical(model, snap)


def _compress_with_fault(make_model, config, data, error):
    """A model from ``make_model(fault)`` whose forward raises ``error`` on the last-but-one call of a clean run,
    its snapshot, and the fault (set its ``probe``)."""
    calls = count_calls(make_model, config, data)
    fault = Fault(calls - 1, error)
    model = make_model(fault)
    snap = snapshot(model)
    return model, snap, fault


@pytest.mark.parametrize("method", [pytest.param("magnitude", id="C04-magnitude"),
                                    pytest.param("hessian", id="C04-hessian"),
                                    pytest.param("par", id="C04-par")])
def test_fault_late_in_compress_restores_every_weight(method):
    data = batches()
    config = SparseConfig(method=method)
    model, snap, fault = _compress_with_fault(
        lambda f: Chain(f), config, data, RuntimeError("boom"))
    fault.probe = lambda: bool((model.l1.weight == 0).any() and (model.l2.weight == 0).any())
    with pytest.raises(RuntimeError, match=r"dataset\[\d\]: the model failed on this batch \(RuntimeError: boom\)"):
        Compressor(model, config).compress(data)
    assert fault.fired and fault.probe_at_fault, "the fault must come after two layers were sparsified"
    assert_identical(model, snap)


def test_C05_keyboard_interrupt_restores_every_weight():
    data = batches()
    config = SparseConfig()
    model, snap, fault = _compress_with_fault(lambda f: Chain(f), config, data, KeyboardInterrupt())
    fault.probe = lambda: bool((model.l1.weight == 0).any())
    with pytest.raises(KeyboardInterrupt):
        Compressor(model, config).compress(data)
    assert fault.probe_at_fault
    assert_identical(model, snap)


@pytest.mark.parametrize("method, error", [
    pytest.param("magnitude", RuntimeError("boom"), id="C06-magnitude"),
    pytest.param("weight_magnitude", RuntimeError("boom"), id="C06-weight_magnitude"),
    pytest.param("hessian", RuntimeError("boom"), id="C06-hessian"),
    pytest.param("par", RuntimeError("boom"), id="C06-par"),
    pytest.param("par_v2", RuntimeError("boom"), id="C06-par_v2"),
    pytest.param("magnitude", KeyboardInterrupt(), id="C06-magnitude-KeyboardInterrupt"),
    pytest.param("hessian", KeyboardInterrupt(), id="C06-hessian-KeyboardInterrupt"),
])
def test_tied_weights_are_restored_exactly(method, error):
    """The sweep's F-3 repro: ``a`` and ``b`` share one Parameter; the fault comes while ``c`` is calibrated."""
    data = batches()
    config = SparseConfig(method=method)
    model, snap, fault = _compress_with_fault(lambda f: Tied(f), config, data, error)
    fault.probe = lambda: bool((model.a.weight == 0).float().mean() >= 0.5)
    with pytest.raises(type(error)):
        Compressor(model, config).compress(data)
    assert fault.probe_at_fault, "the shared weight must have been sparsified when the fault came"
    assert model.a.weight is model.b.weight
    assert_identical(model, snap)


@pytest.mark.parametrize("method", [pytest.param("magnitude", id="C06-llama-tied-magnitude"),
                                    pytest.param("hessian", id="C06-llama-tied-hessian")])
def test_tied_weights_inside_a_block_are_restored_exactly(method):
    """Block-by-block path: gate_proj and up_proj of layer 0 share one weight; layer 1 fails afterwards."""
    model = tiny_llama(tie_gate_up=True)
    snap = snapshot(model)
    mlp = model.model.layers[0].mlp
    fault = fail_module_on_call(model.model.layers[1], 3, lambda: (mlp.up_proj.weight == 0).float().mean() >= 0.5)
    with pytest.raises(RuntimeError, match=r"block 'model\.layers\.1' failed"):
        Compressor(model, SparseConfig(method=method)).compress(llama_batches())
    assert fault["probe_at_fault"], "layer 0 must have been sparsified when the fault came"
    assert mlp.up_proj.weight is mlp.gate_proj.weight
    assert_identical(model, snap)


@pytest.mark.parametrize("method, dtype", [
    pytest.param("magnitude", torch.float32, id="C07-magnitude-fp32"),
    pytest.param("hessian", torch.float32, id="C07-hessian-fp32"),
    pytest.param("par_v2", torch.float32, id="C07-par_v2-fp32"),
    pytest.param("magnitude", torch.bfloat16, id="C07-magnitude-bf16"),
    pytest.param("hessian", torch.bfloat16, id="C07-hessian-bf16"),
])
def test_llama_block_failure_restores_every_weight(method, dtype):
    model = tiny_llama().to(dtype)
    snap = snapshot(model)
    up = model.model.layers[0].mlp.up_proj
    fault = fail_module_on_call(model.model.layers[1], 3, lambda: (up.weight == 0).float().mean() >= 0.5)
    with pytest.raises(RuntimeError, match=r"dataset\[\d\]: block 'model\.layers\.1' failed on this batch"):
        Compressor(model, SparseConfig(method=method)).compress(llama_batches())
    assert fault["probe_at_fault"], "layer 0 must have been sparsified when the fault came"
    assert_identical(model, snap)


def test_C08_nan_embedding_in_third_batch_names_the_layer():
    model = tiny_llama()
    with torch.no_grad():
        model.model.embed_tokens.weight[5] = NAN
    snap = snapshot(model)
    data = [{"input_ids": torch.tensor([[1, 2, 3, 4]])}, {"input_ids": torch.tensor([[6, 7, 8, 9]])},
            {"input_ids": torch.tensor([[1, 5, 3, 4]])}]
    with pytest.raises(ValueError, match=r"model\.layers\.0\.\S+.*NaN or inf"):
        Compressor(model, SparseConfig()).compress(data)
    assert_identical(model, snap)


def test_C09_token_beyond_the_vocabulary_names_the_batch():
    model = tiny_llama()
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match=r"dataset\[0\]: the model failed on this batch"):
        Compressor(model, SparseConfig()).compress([{"input_ids": torch.tensor([[1, 500]])}])
    assert_identical(model, snap)


def test_C10_extra_batch_key_is_swallowed_by_the_model():
    model = tiny_llama()
    Compressor(model, SparseConfig()).compress([{"input_ids": torch.tensor([[1, 2, 3, 4]]), "bogus": 1}])
    assert abs(float((model.model.layers[0].mlp.up_proj.weight == 0).float().mean()) - 0.5) < 0.01


def test_C11_model_without_linear_layers_warns_and_changes_nothing(caplog):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    snap = snapshot(model)
    with captured_log(caplog):
        compressor = Compressor(model, SparseConfig())
        compressor.compress([torch.randn(1, 3, 8, 8)])
    assert "has no Linear layer to sparsify; nothing changed" in caplog.text
    assert compressor.report().layers == []
    assert_identical(model, snap)


# ------------------------------------------------------------------------------------------- S32 / F-13: N:M width
def test_S32_pattern_wider_than_every_row_is_refused_before_anything_changes():
    model = Chain(widths=(64, 64, 64, 8))
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"pattern '2:4096' needs rows of at least 4096 .* widest row .* 64 \('l1'\)"):
        Compressor(model, SparseConfig(pattern="2:4096")).compress(batches(width=64))
    assert_identical(model, snap)


def test_S32_pattern_wider_than_some_rows_warns_and_leaves_them_dense(caplog):
    model = Chain(widths=(64, 8, 64, 4))  # l2's rows are 8 wide, l1's and l3's 64
    with captured_log(caplog):
        compressor = Compressor(model, SparseConfig(pattern="2:32"))
        compressor.compress(batches(width=64))
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and "'2:32'" in warning[0] and "l2" in warning[0] and "l1" not in warning[0]
    assert not (model.l2.weight == 0).any()
    groups = (model.l1.weight == 0).reshape(8, 2, 32).sum(-1)
    assert torch.equal(groups, torch.full_like(groups, 2))


# ------------------------------------------------------------------------------------------- F: export and load
@pytest.fixture()
def sparse_file(tmp_path):
    path = tmp_path / "good.sparse.safetensors"
    return path, export_small(path)


def _drop_checksums(meta):
    meta.pop("checksums", None)


def test_F01_truncated_file(sparse_file, tmp_path):
    path, _ = sparse_file
    bad = tmp_path / "truncated.safetensors"
    blob = path.read_bytes()
    for cut in (4, 200, len(blob) // 2, len(blob) - 1):
        bad.write_bytes(blob[:cut])
        with pytest.raises(CheckpointError, match="truncated.safetensors"):
            load_sparse(bad)


def test_F02_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_sparse(tmp_path / "nope.safetensors")


def test_F03_plain_dense_safetensors(tmp_path):
    path = tmp_path / "dense.safetensors"
    save_state_dict({"w": torch.ones(2, 2)}, path)
    with pytest.raises(CheckpointError, match=r"dense\.safetensors' is not a msmodelslim-sparse-bitmask file"):
        load_sparse(path)


def _set(key, value):
    def mutate(raw):
        raw[key] = value(raw[key]) if callable(value) else value
    return mutate


def _delete(key):
    return lambda raw: raw.pop(key)


# (mutation of the tensors, mutation of the metadata, message naming the tensor or entry at fault)
DAMAGE = {
    "F04-shape-4x4096": (_set("a.weight.shape", torch.tensor([13, 4096])), None,
                         r"tensor 'a\.weight': \.bitmask is 13x3 but \.shape says 13x4096"),
    "F04-shape-narrower-same-bytes": (_set("a.weight.shape", torch.tensor([13, 17])), None,
                                      r"tensor 'a\.weight': \.bitmask has bits set beyond column 17"),
    "F05-too-few-values": (_set("a.weight.compressed", lambda t: t[:3].clone()), None,
                           r"tensor 'a\.weight': \.compressed holds 3 values but \.bitmask marks \d+"),
    "F05-too-many-values": (_set("a.weight.compressed", lambda t: torch.cat([t, t[:2]])), None,
                            r"tensor 'a\.weight': \.compressed holds \d+ values"),
    "F05-shape-1e6x1e6": (_set("a.weight.shape", torch.tensor([10 ** 6, 10 ** 6])), None,
                          r"tensor 'a\.weight': \.bitmask is 13x3 but \.shape says 1000000x1000000"),
    "F05-negative-dims": (_set("a.weight.shape", torch.tensor([-13, 20])), None,
                          r"tensor 'a\.weight': \.shape -13x20 has a negative dimension"),
    "F05-shape-float": (_set("a.weight.shape", torch.tensor([13.0, 20.0])), None,
                        r"tensor 'a\.weight\.shape' is F32 2; expected a 1-D I64 tensor"),
    "F05-shape-3-values": (_set("a.weight.shape", torch.tensor([13, 20, 1])), None,
                           r"tensor 'a\.weight': \.shape must be 2 int64 values"),
    "F05-bitmask-int64": (_set("a.weight.bitmask", lambda t: t.to(torch.int64)), None,
                          r"tensor 'a\.weight\.bitmask' is I64 13x3; expected a 2-D U8 tensor"),
    "F05-row-offsets": (_set("a.weight.row_offsets", lambda t: t.flip(0).contiguous()), None,
                        r"tensor 'a\.weight': \.row_offsets do not match"),
    "F05-missing-part": (_delete("a.weight.bitmask"), None, r"sparse tensor 'a\.weight' lacks its part\(s\) \.bitmask"),
    "F05-tied-missing-key": (None, lambda m: m.update(tied='{"c.weight": "missing_key"}'),
                             r"metadata 'tied' maps 'c\.weight' to 'missing_key', which is not in the file"),
    "F05-tied-not-json": (None, lambda m: m.update(tied="{not json"), r"metadata entry 'tied' is not valid JSON"),
    "F05-tied-not-a-map": (None, lambda m: m.update(tied="[1, 2]"), r"metadata entry 'tied' must be a JSON object"),
    "F05-tied-missing": (None, lambda m: m.pop("tied"), r"metadata entry 'tied' is missing"),
    "F05-tied-shadows-tensor": (None, lambda m: m.update(tied='{"head.bias": "a.bias"}'),
                                r"metadata 'tied' names 'head\.bias', which is also a stored tensor"),
    "F05-version": (None, lambda m: m.update(version="2"), r"is msmodelslim-sparse-bitmask version '2'"),
}


@pytest.mark.parametrize("keep_checksums", [pytest.param(False, id="structure"), pytest.param(True, id="checksums")])
@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_sparse_file_raises_checkpoint_error(sparse_file, tmp_path, name, keep_checksums):
    """Every damage is caught by the structural checks alone (checksums stripped), and with checksums too."""
    path, _ = sparse_file
    tensors, meta, match = DAMAGE[name]
    bad = rewrite(path, tmp_path / "damaged.safetensors", tensors, meta, keep_checksums=keep_checksums)
    with pytest.raises(CheckpointError, match=r"damaged\.safetensors") as info:
        load_sparse(bad)
    if not keep_checksums:
        assert info.match(match)


def test_F05_absurd_shape_is_refused_before_allocating(sparse_file, tmp_path):
    path, _ = sparse_file
    huge = 2 ** 40
    bad = rewrite(path, tmp_path / "huge.safetensors", _set("a.weight.shape", torch.tensor([huge, huge])),
                  keep_checksums=False)
    with pytest.raises(CheckpointError, match=r"huge\.safetensors.*tensor 'a\.weight'"):
        load_sparse(bad)


@pytest.mark.parametrize("name, content", [
    pytest.param("random.safetensors", os.urandom(4096), id="F05-random-bytes"),
    pytest.param("zero.safetensors", b"", id="F05-zero-bytes"),
    pytest.param("header.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}", id="F05-header-not-json"),
])
def test_unreadable_file_raises_checkpoint_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_sparse(path)


def test_F05_checksum_names_the_damaged_tensor(sparse_file, tmp_path):
    path, _ = sparse_file
    header, data = split_file(path.read_bytes())
    start, _ = header["head.bias"]["data_offsets"]
    data = bytearray(data)
    data[start] ^= 0x40
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(join_file(header, bytes(data)))
    with pytest.raises(CheckpointError, match=r"flipped\.safetensors': tensor 'head\.bias' does not match its "
                                              r"checksum"):
        load_sparse(bad)


def test_F05_files_without_checksums_still_load(sparse_file, tmp_path):
    path, original = sparse_file
    older = rewrite(path, tmp_path / "older.safetensors", meta=_drop_checksums)
    loaded = load_sparse(older)
    assert set(loaded) == set(original) and all(same_bits(loaded[k], v) for k, v in original.items())


def test_F06_export_into_missing_dir_or_onto_a_dir(tmp_path):
    compressor = Compressor(_mlp(), SparseConfig())
    compressor.compress([torch.randn(4, 16)])
    with pytest.raises(CheckpointError, match="does not exist"):
        compressor.export(tmp_path / "no" / "such" / "m.safetensors")
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    with pytest.raises(CheckpointError, match=r"dir\.safetensors' is a directory"):
        compressor.export(folder)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("name", [pytest.param("x.bin", id="F07-bin"), pytest.param("x.pt", id="F07-pt"),
                                  pytest.param("x", id="F07-no-suffix")])
def test_F07_export_to_another_suffix_is_refused_before_writing(tmp_path, name):
    compressor = Compressor(_mlp(), SparseConfig())
    compressor.compress([torch.randn(4, 16)])
    target = tmp_path / name
    with pytest.raises(ValueError, match=re.escape(f"'{target}': the file name must end in '.safetensors'")) as info:
        compressor.export(target)
    assert isinstance(info.value, CheckpointError)
    assert list(tmp_path.iterdir()) == []


def test_F07_export_writes_a_temporary_file_then_renames(sparse_file, monkeypatch):
    """A failure while writing leaves the previous file as it was and no temporary file behind."""
    path, original = sparse_file
    before = path.read_bytes()
    from msmodelslim.pytorch.sparse.sparse_tools import export

    real_compress, partial = export.compress, []

    def failing(weight):
        partial.extend(p for p in path.parent.iterdir() if p.name.endswith(".tmp"))
        if partial:  # the data pass has begun: the temporary file is being written
            raise OSError(28, "No space left on device (injected)")
        return real_compress(weight)

    monkeypatch.setattr(export, "compress", failing)
    compressor = Compressor(_mlp(), SparseConfig())
    compressor.compress([torch.randn(4, 16)])
    with pytest.raises(OSError, match="injected"):
        compressor.export(path)
    assert partial and path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_F07_export_round_trip_keeps_ties(sparse_file):
    path, original = sparse_file
    loaded = load_sparse(path)
    assert set(loaded) == set(original)
    assert all(same_bits(loaded[k], v) for k, v in original.items())
    assert loaded["c.weight"] is loaded["b.weight"]


@pytest.mark.parametrize("name, content", [
    pytest.param("empty.pt", b"", id="F08-empty-pt"),
    pytest.param("short.pt", b"\x80\x02", id="F08-pickle-eof-empty-message"),
    pytest.param("one.pt", b"\x80", id="F08-pickle-one-byte"),
    pytest.param("empty.safetensors", b"", id="F08-empty-safetensors"),
    pytest.param("random.safetensors", bytes(range(256)) * 8, id="F08-random-safetensors"),
    pytest.param("header.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}",
                 id="F08-header-not-json"),
])
def test_F08_damaged_checkpoints_raise_checkpoint_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")) as info:
        load_state_dict(path)
    if not content:
        assert info.match("is empty")


def test_F08_truncated_safetensors_raises_checkpoint_error(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    blob = path.read_bytes()
    path.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*corrupt or truncated"):
        load_state_dict(path)


def test_F04_repro_shape_disagreeing_with_bitmask(tmp_path):
    """The sweep's r_f04 repro, verbatim in spirit: a 4x16 weight whose .shape is rewritten to 4x4096."""
    weight = torch.randn(4, 16)
    weight[:, ::2] = 0
    path = tmp_path / "w.safetensors"
    from msmodelslim.pytorch.sparse.sparse_tools.export import save_sparse

    save_sparse({"w": weight}, path, names=["w"])
    raw, meta = read_raw(path)
    raw["w.shape"] = torch.tensor([4, 4096])
    for keep in (True, False):
        bad = tmp_path / f"bad{keep}.safetensors"
        save_file(raw, str(bad), metadata=meta if keep else {k: v for k, v in meta.items() if k != "checksums"})
        with pytest.raises(CheckpointError, match=rf"bad{keep}\.safetensors': tensor 'w[.']"):
            load_sparse(bad)
