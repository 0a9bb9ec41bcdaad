"""Property tests of ``load_sparse`` on damaged files (sweep rows F01, F04, F05; findings F-7, F-9).

Starting from a valid export of a small model, one random damage - a truncation, a burst of flipped bytes, an
altered metadata entry, rewritten ``.shape`` values, a deleted tensor, an altered dtype or shape in the header - must
give either exactly the original tensors or a ``CheckpointError``: never another exception, never other data.
Without checksums (files written before they existed) the loader must still raise nothing but ``CheckpointError``,
and whatever it returns must be exactly what the file describes.
"""
import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msmodelslim.errors import CheckpointError
from msmodelslim.pytorch.sparse.sparse_tools import export, load_sparse
from sparse_sweep_helpers import export_small, join_file, read_raw, rewrite, same_bits, split_file

SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
META_FIELDS = ["format", "version", "tied", "checksums", "sparsity_structure", "method", "added"]
META_VALUES = st.one_of(
    st.none(),  # delete the entry
    st.text(max_size=24),
    st.sampled_from(["{}", "[]", "1", "2", "null", '{"c.weight": "b.weight"}', '{"c.weight": "head.bias"}',
                     '{"c.weight": "nope"}', '{"algorithm": "crc32", "metadata": "00000000", "tensors": ""}',
                     "msmodelslim-sparse-bitmask", "pt"]))
DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "X9"]
INT64 = st.one_of(st.integers(-3, 40), st.integers(-2 ** 63, 2 ** 63 - 1))
DIMS = st.lists(st.one_of(st.integers(0, 40), st.integers(0, 2 ** 64 - 1)), max_size=3)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A valid export, the same without checksums, and the tensors ``load_sparse`` must give for them."""
    folder = tmp_path_factory.mktemp("property")
    path = folder / "base.safetensors"
    original = export_small(path)
    plain = rewrite(path, folder / "plain.safetensors", meta=lambda m: m.pop("checksums"))
    return folder, {True: path.read_bytes(), False: plain.read_bytes()}, original


# ------------------------------------------------------------------------------------------- damages
def _truncate(blob, data):
    return blob[:data.draw(st.integers(0, len(blob) - 1), label="cut")]


def _flip(blob, data):
    """XOR a burst of 1-4 consecutive bytes (CRC-32 detects every such burst)."""
    start = data.draw(st.integers(0, len(blob) - 1), label="offset")
    mask = data.draw(st.binary(min_size=1, max_size=4), label="xor")
    damaged = bytearray(blob)
    for i, value in enumerate(mask[:len(blob) - start]):
        damaged[start + i] ^= value
    return bytes(damaged)


def _metadata(blob, data):
    header, body = split_file(blob)
    meta = header.setdefault("__metadata__", {})
    field = data.draw(st.sampled_from(META_FIELDS), label="field")
    value = data.draw(META_VALUES, label="value")
    if value is None:
        meta.pop(field, None)
    else:
        meta[field] = value
    return join_file(header, body)


def _shape_values(blob, data):
    header, body = split_file(blob)
    key = data.draw(st.sampled_from(sorted(k for k in header if k.endswith(".shape"))), label="key")
    start, end = header[key]["data_offsets"]
    values = data.draw(st.tuples(INT64, INT64), label="values")
    body = body[:start] + struct.pack("<qq", *values) + body[end:]
    return join_file(header, body)


def _header_entry(blob, data):
    """Change the dtype or the shape a tensor's header entry claims (its bytes stay as they are)."""
    header, body = split_file(blob)
    key = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")), label="key")
    if data.draw(st.booleans(), label="dtype?"):
        header[key]["dtype"] = data.draw(st.sampled_from(DTYPES), label="dtype")
    else:
        header[key]["shape"] = data.draw(DIMS, label="shape")
    return join_file(header, body)


def _delete(blob, data, folder):
    source = folder / "source.safetensors"
    source.write_bytes(blob)
    raw, _ = read_raw(source)
    key = data.draw(st.sampled_from(sorted(raw)), label="deleted")
    return rewrite(source, folder / "deleted.safetensors", tensors=lambda tensors: tensors.pop(key)).read_bytes()


def _damage(blob, data, folder):
    kind = data.draw(st.sampled_from(["truncate", "flip", "metadata", "shape", "header", "delete"]), label="kind")
    if kind == "delete":
        return _delete(blob, data, folder)
    return {"truncate": _truncate, "flip": _flip, "metadata": _metadata, "shape": _shape_values,
            "header": _header_entry}[kind](blob, data)


def _load(folder, blob):
    path = folder / "damaged.safetensors"
    path.write_bytes(blob)
    try:
        return load_sparse(path)
    except CheckpointError as exc:
        assert "damaged.safetensors" in str(exc), f"the message must name the file: {exc}"
        return None


# ------------------------------------------------------------------------------------------- properties
@SETTINGS
@given(data=st.data())
def test_damaged_file_loads_exactly_or_raises_checkpoint_error(files, data):
    folder, blobs, original = files
    state = _load(folder, _damage(blobs[True], data, folder))
    if state is not None:
        assert set(state) == set(original)
        for key, value in original.items():
            assert same_bits(state[key], value), f"'{key}' differs from the original"


@SETTINGS
@given(data=st.data())
def test_damaged_file_without_checksums_raises_only_checkpoint_error(files, data):
    """Without checksums a damage can go unseen, but the result is always exactly what the file describes."""
    folder, blobs, _ = files
    blob = _damage(blobs[False], data, folder)
    state = _load(folder, blob)
    if state is None:
        return
    raw, meta = read_raw(folder / "damaged.safetensors")
    tied = json.loads(meta["tied"])
    for key, value in state.items():
        if key in tied:
            assert value is state[tied[key]]
        elif key in raw:
            assert same_bits(value, raw[key])
        else:
            parts = export.compress(value)
            assert all(same_bits(parts[p], raw[f"{key}.{p}"]) for p in export.PARTS), key
            assert list(value.shape) == raw[f"{key}.shape"].tolist()


def test_undamaged_files_load_exactly(files):
    folder, blobs, original = files
    for blob in blobs.values():
        state = _load(folder, blob)
        assert set(state) == set(original)
        assert all(same_bits(state[k], v) for k, v in original.items())
        assert state["c.weight"] is state["b.weight"]
        assert torch.count_nonzero(state["a.weight"]) < state["a.weight"].numel()
