"""Compact export of sparse weights, loadable back bit for bit.

Format ``msmodelslim-sparse-bitmask``, version 1: one safetensors file. Every sparse 2-D weight ``<name>`` is
stored as four tensors, the layout of compressed-tensors' ``sparse-bitmask`` format:

* ``<name>.compressed``: its non-zero values, row by row, in the weight's dtype;
* ``<name>.bitmask``: uint8 ``[rows, ceil(columns / 8)]``, bit ``c % 8`` (least significant first) of byte ``c // 8``
  set where column ``c`` holds a stored value;
* ``<name>.shape``: int64 ``[rows, columns]``;
* ``<name>.row_offsets``: int64 ``[rows]``, where each row starts in ``.compressed``.

Other tensors are stored as they are. A tensor shared by several names (tied embeddings) is stored once; the
metadata entry ``tied`` (JSON) maps the other names to it. Negative zeros count as values, so the round trip is
exact to the bit. The file is about (1 - sparsity) of the dense size plus one bit per weight.

The metadata entry ``checksums`` (JSON) holds ``metadata``, the CRC-32 of the other metadata entries, and
``tensors``, the CRC-32 of every stored tensor (its name, dtype, shape and bytes) as 8 hex digits each, in sorted
name order - about 8 bytes per tensor. :func:`load_sparse` checks them when present (files written before they
were added load without) and the structure of every sparse weight in any case, so a damaged file gives a
:class:`CheckpointError`, never wrong data. CRC-32 detects accidental damage (every burst of up to 32 bits), not
deliberate tampering.
"""
import errno
import json
import os
import struct
import zlib

import numpy
import torch

from msmodelslim.errors import CheckpointError
from msmodelslim.utils.checkpoint import (SAFETENSORS_SUFFIX, atomic_write, check_parent_directory, check_path_arg,
                                          error_summary)

FORMAT = "msmodelslim-sparse-bitmask"
VERSION = "1"
PARTS = ("compressed", "bitmask", "shape", "row_offsets")
MIN_SPARSITY = 0.1  # below this a bitmask does not pay for itself (fp16: 1 bit per 16 saved)
CHECKSUMS = "checksums"
# What the header must say about each part: (safetensors dtype or None for any, number of dimensions).
PART_LAYOUT = {"compressed": (None, 1), "bitmask": ("U8", 2), "shape": ("I64", 1), "row_offsets": ("I64", 1)}


def stored_mask(weight):
    """Where a value must be stored: non-zero, or a negative zero."""
    return (weight != 0) | torch.signbit(weight)


def compress(weight):
    """The four tensors of one 2-D weight (see the module docstring)."""
    weight = weight.detach().cpu().contiguous()
    mask = stored_mask(weight)
    counts = mask.sum(1)
    offsets = torch.zeros(weight.shape[0], dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)[:-1]
    bitmask = torch.from_numpy(numpy.packbits(mask.numpy(), axis=-1, bitorder="little"))
    return {"compressed": weight[mask].contiguous(), "bitmask": bitmask,
            "shape": torch.tensor(list(weight.shape), dtype=torch.int64), "row_offsets": offsets}


def decompress(parts, where="sparse weight"):
    """The dense weight from its four tensors, after checking that they agree with each other.

    Raises:
        CheckpointError: the parts disagree (shape against bitmask, stored values against set bits, row offsets),
            named by ``where``; nothing of the claimed dense size is allocated before the checks pass.
    """
    rows, columns = _dense_shape(parts, where)
    bitmask = parts["bitmask"]
    if tuple(bitmask.shape) != (rows, -(-columns // 8)):
        raise CheckpointError(f"{where}: .bitmask is {_dims(bitmask.shape)} but .shape says {rows}x{columns} "
                              f"(needs {rows}x{-(-columns // 8)}).")
    bits = numpy.unpackbits(bitmask.numpy(), axis=-1, count=columns, bitorder="little").astype(bool)
    counts = bits.sum(1, dtype=numpy.int64)
    total = int(counts.sum())
    if total != int(numpy.unpackbits(bitmask.numpy()).sum(dtype=numpy.int64)):
        raise CheckpointError(f"{where}: .bitmask has bits set beyond column {columns}.")
    if parts["compressed"].numel() != total:
        raise CheckpointError(f"{where}: .compressed holds {parts['compressed'].numel()} values but .bitmask "
                              f"marks {total}.")
    offsets = numpy.concatenate([[0], numpy.cumsum(counts)[:-1]]) if rows else numpy.zeros(0, numpy.int64)
    if tuple(parts["row_offsets"].shape) != (rows,) or not numpy.array_equal(parts["row_offsets"].numpy(),
                                                                            offsets):
        raise CheckpointError(f"{where}: .row_offsets do not match the rows of .bitmask.")
    dense = torch.zeros(rows, columns, dtype=parts["compressed"].dtype)
    dense[torch.from_numpy(bits)] = parts["compressed"]
    return dense


def _dense_shape(parts, where):
    shape = parts["shape"]
    if shape.dtype != torch.int64 or tuple(shape.shape) != (2,):
        raise CheckpointError(f"{where}: .shape must be 2 int64 values, got {shape.dtype} {_dims(shape.shape)}.")
    rows, columns = (int(v) for v in shape.tolist())
    if rows < 0 or columns < 0:
        raise CheckpointError(f"{where}: .shape {rows}x{columns} has a negative dimension.")
    return rows, columns


def _dims(shape):
    return "x".join(str(d) for d in shape) or "scalar"


def sparsity(tensor):
    """The fraction of entries that need not be stored (zeros, but not negative zeros)."""
    return 1.0 - float(stored_mask(tensor).float().mean()) if tensor.numel() else 0.0


def check_export_path(path):
    """``path`` as a str, if it names a ``.safetensors`` file.

    Raises:
        SchemaValidateError: ``path`` is not a str or PathLike.
        CheckpointError (a ValueError): another suffix - this format is a safetensors file only, and
            :func:`load_sparse` could not read anything else back.
    """
    path = check_path_arg(path)
    if not path.endswith(SAFETENSORS_SUFFIX):
        raise CheckpointError(f"Cannot export the sparse format to '{path}': the file name must end in "
                              f"'{SAFETENSORS_SUFFIX}' (it is a safetensors file), e.g. 'model.sparse.safetensors'.")
    return path


def tensor_crc(key, tensor):
    """CRC-32 (8 hex digits) of a tensor's name, dtype, shape and bytes."""
    crc = zlib.crc32(f"{key}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
    data = tensor.detach().cpu().contiguous().reshape(-1)
    if data.numel():
        crc = zlib.crc32(data.view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


def metadata_crc(meta):
    """CRC-32 (8 hex digits) of the metadata entries other than ``checksums``."""
    entries = {k: v for k, v in meta.items() if k != CHECKSUMS}
    return f"{zlib.crc32(json.dumps(entries, sort_keys=True).encode()):08x}"


def save_sparse(state_dict, path, names=None, metadata=None):
    """Write ``state_dict`` to ``path`` in the compact format, atomically (a temporary file beside ``path``,
    renamed over it once complete, so an error leaves any previous file as it was).

    ``names`` lists the weights to store sparse (default: every 2-D floating tensor with at least 10 % zeros).
    ``metadata`` adds string entries to the file's metadata; it cannot replace ``format``, ``version``, ``tied``
    or ``checksums``.

    Raises:
        CheckpointError: ``path`` does not end in ``.safetensors`` (checked before anything is done), or its
            directory does not exist or is not a directory.
        SchemaValidateError: ``path`` is not a str or PathLike.
    """
    path = check_export_path(path)
    unique, tied = {}, {}
    for key, tensor in state_dict.items():
        storage = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and storage in unique:
            tied[key] = unique[storage]
        else:
            unique.setdefault(storage, key)
    if names is None:
        names = {key for key, tensor in state_dict.items()
                 if tensor.dim() == 2 and tensor.is_floating_point() and sparsity(tensor) >= MIN_SPARSITY}
    write_sparse(path, lambda: ((k, t) for k, t in state_dict.items() if k not in tied), set(names), metadata, tied)


def write_sparse(path, produce, names, metadata=None, tied=None):
    """Write the compact format from ``produce()``, a function returning an iterator of ``(key, tensor)``; the
    weights named in ``names`` are stored sparse. ``produce`` is called twice (sizes and checksums, then the
    data), so only one tensor need be in memory at a time; it must give the same tensors both times. ``tied``
    maps names not stored to the stored name they share a tensor with. Written atomically.

    Raises:
        CheckpointError: as :func:`save_sparse`; ``produce`` gave different tensors the second time.
        SchemaValidateError: ``path`` is not a str or PathLike.
    """
    path = check_export_path(path)

    def parts():
        for key, tensor in produce():
            if key in names:
                for part, value in compress(tensor).items():
                    yield f"{key}.{part}", value
            else:
                yield key, tensor.detach().cpu().contiguous()

    meta = {k: str(v) for k, v in (metadata or {}).items()}
    meta.update({"format": FORMAT, "version": VERSION, "tied": json.dumps(tied or {})})
    header, crcs, offset = {}, {}, 0
    for key, tensor in parts():
        crcs[key] = tensor_crc(key, tensor)
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    meta[CHECKSUMS] = json.dumps({"algorithm": "crc32", "metadata": metadata_crc(meta),
                                  "tensors": "".join(crcs[key] for key in sorted(crcs))})
    text = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    check_parent_directory(path)

    def write(tmp_path):
        with open(tmp_path, "wb") as handle:
            handle.write(struct.pack("<Q", len(text)))
            handle.write(text)
            for key, tensor in parts():
                expected = header.get(key)
                if expected is None or expected["shape"] != list(tensor.shape):
                    raise CheckpointError(f"write_sparse: tensor '{key}' changed between the two passes.")
                if tensor.numel():
                    handle.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())

    atomic_write(path, write)


_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3",
                       torch.float8_e5m2: "F8_E5M2"}


def load_sparse(path):
    """The dense state dict stored by :func:`save_sparse` (bit-exact).

    Everything the header says is checked before any tensor is read: the format and version, the ``tied`` and
    ``checksums`` entries, that every sparse weight has its four parts with the right dtypes and ranks. Then each
    tensor is read and checked against its checksum, and each sparse weight's parts against each other (its
    ``.shape`` against ``.bitmask``, the stored values against the set bits) before its dense tensor is made.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: anything else that keeps the file from being read back exactly - not a file, empty, not
            safetensors, not this format, truncated, or damaged; the message names the file and, where one is at
            fault, the tensor.
    """
    path = _check_load_path(path)
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            header = _read_header(handle)
            meta = handle.metadata() or {}
            plan = _plan(path, header, meta)
            raw = {key: _read_tensor(handle, path, key) for key in header}
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises SafetensorError (an Exception) on a damaged file
        raise CheckpointError(f"'{path}' is not a readable safetensors file (corrupt or truncated): "
                              f"{error_summary(exc)}") from None
    _verify_checksums(path, raw, plan["checksums"])
    state = {key: raw[key] for key in plan["plain"]}
    for base in plan["sparse"]:
        state[base] = decompress({part: raw[f"{base}.{part}"] for part in PARTS}, f"'{path}': tensor '{base}'")
    for alias, key in plan["tied"].items():
        state[alias] = state[key]
    return state


def _check_load_path(path):
    path = check_path_arg(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"Sparse checkpoint '{path}' does not exist", path)
    if not os.path.isfile(path):
        raise CheckpointError(f"'{path}' is not a regular file.")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"'{path}' is empty (0 bytes): not a {FORMAT} file.")
    return path


def _read_header(handle):
    """``{key: (dtype name, shape)}`` of every tensor, from the header alone."""
    header = {}
    for key in handle.keys():
        view = handle.get_slice(key)
        header[key] = (view.get_dtype(), tuple(view.get_shape()))
    return header


def _read_tensor(handle, path, key):
    try:
        return handle.get_tensor(key)
    except Exception as exc:
        raise CheckpointError(f"'{path}': tensor '{key}' cannot be read: {error_summary(exc)}") from None


def _plan(path, header, meta):
    """Check the header and metadata; return the plain keys, the sparse weights, the aliases and the checksums.

    Raises:
        CheckpointError: naming the file and the entry or tensor at fault.
    """
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a {FORMAT} file (format: {meta.get('format')!r}).")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"'{path}' is {FORMAT} version {meta.get('version')!r}; this reader handles version "
                              f"{VERSION}.")
    plain, sparse = _group(path, header)
    tied = _json_map(path, meta, "tied", required=True)
    for alias, key in tied.items():
        if alias in plain or alias in sparse:
            raise CheckpointError(f"'{path}': metadata 'tied' names '{alias}', which is also a stored tensor.")
        if key not in plain and key not in sparse:
            raise CheckpointError(f"'{path}': metadata 'tied' maps '{alias}' to '{key}', which is not in the file.")
    crcs = _checksums(path, meta, header)
    return {"plain": plain, "sparse": sparse, "tied": tied, "checksums": crcs}


def _checksums(path, meta, header):
    """``{key: crc}`` from the ``checksums`` entry (None when absent), after checking the metadata's own CRC."""
    if CHECKSUMS not in meta:
        return None
    try:
        entry = json.loads(meta[CHECKSUMS])
        tensors, algorithm, meta_crc = entry["tensors"], entry["algorithm"], entry["metadata"]
    except (ValueError, TypeError, KeyError):
        raise CheckpointError(f"'{path}': metadata entry '{CHECKSUMS}' is not a JSON object with 'algorithm', "
                              f"'metadata' and 'tensors'.") from None
    if algorithm != "crc32" or not isinstance(tensors, str):
        raise CheckpointError(f"'{path}': metadata entry '{CHECKSUMS}' is not in the crc32 form this reader knows.")
    if meta_crc != metadata_crc(meta):
        raise CheckpointError(f"'{path}': the metadata does not match its checksum (the file is damaged).")
    keys = sorted(header)
    if len(tensors) != 8 * len(keys):
        raise CheckpointError(f"'{path}': the file holds {len(keys)} tensors but its checksums cover "
                              f"{len(tensors) // 8} (a tensor is missing or extra: the file is damaged).")
    return {key: tensors[8 * i:8 * i + 8] for i, key in enumerate(keys)}


def _group(path, header):
    """Split the keys into plain tensors and sparse weights (all four parts present, right dtypes and ranks)."""
    groups = {}
    for key in header:
        base, _, part = key.rpartition(".")
        if part in PARTS and base:
            groups.setdefault(base, set()).add(part)
    # A key ending like a part is a plain tensor only when it is alone (a model may have a buffer named "shape").
    sparse = sorted(base for base, parts in groups.items() if len(parts) > 1)
    for base in sparse:
        missing = [part for part in PARTS if part not in groups[base]]
        if missing:
            raise CheckpointError(f"'{path}': sparse tensor '{base}' lacks its part(s) "
                                  f"{', '.join('.' + p for p in missing)}.")
        for part in PARTS:
            dtype, shape = header[f"{base}.{part}"]
            want_dtype, rank = PART_LAYOUT[part]
            if (want_dtype is not None and dtype != want_dtype) or len(shape) != rank:
                raise CheckpointError(f"'{path}': tensor '{base}.{part}' is {dtype} {_dims(shape)}; expected a "
                                      f"{rank}-D {want_dtype or 'value'} tensor.")
    parts_of_sparse = {f"{base}.{part}" for base in sparse for part in PARTS}
    plain = [key for key in header if key not in parts_of_sparse]
    clash = set(plain) & set(sparse)
    if clash:
        raise CheckpointError(f"'{path}': tensor '{sorted(clash)[0]}' is stored both dense and sparse.")
    return plain, sparse


def _json_map(path, meta, entry, required):
    """The metadata entry ``entry`` as a ``{str: str}`` dict (None when absent and not required)."""
    if entry not in meta:
        if required:
            raise CheckpointError(f"'{path}': metadata entry '{entry}' is missing.")
        return None
    try:
        value = json.loads(meta[entry])
    except ValueError:
        raise CheckpointError(f"'{path}': metadata entry '{entry}' is not valid JSON.") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise CheckpointError(f"'{path}': metadata entry '{entry}' must be a JSON object of strings.")
    return value


def _verify_checksums(path, raw, crcs):
    if crcs is None:
        return
    for key, tensor in raw.items():
        if tensor_crc(key, tensor) != crcs[key]:
            raise CheckpointError(f"'{path}': tensor '{key}' does not match its checksum (the file is damaged).")
