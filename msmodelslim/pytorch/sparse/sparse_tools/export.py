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
"""
import json

import numpy
import torch

from msmodelslim.errors import CheckpointError
from msmodelslim.utils.checkpoint import open_checkpoint, save_state_dict

FORMAT = "msmodelslim-sparse-bitmask"
VERSION = "1"
PARTS = ("compressed", "bitmask", "shape", "row_offsets")
MIN_SPARSITY = 0.1  # below this a bitmask does not pay for itself (fp16: 1 bit per 16 saved)


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


def decompress(parts):
    """The dense weight from its four tensors."""
    rows, columns = (int(v) for v in parts["shape"].tolist())
    bits = numpy.unpackbits(parts["bitmask"].numpy(), axis=-1, count=columns, bitorder="little")
    mask = torch.from_numpy(bits.astype(bool)).reshape(rows, columns)
    dense = torch.zeros(rows, columns, dtype=parts["compressed"].dtype)
    dense[mask] = parts["compressed"]
    return dense


def sparsity(tensor):
    return 1.0 - float(stored_mask(tensor).float().mean()) if tensor.numel() else 0.0


def save_sparse(state_dict, path, names=None, metadata=None):
    """Write ``state_dict`` to ``path`` (``.safetensors``) in the compact format, atomically.

    ``names`` lists the weights to store sparse (default: every 2-D floating tensor with at least 10 % zeros).
    """
    unique, tied = {}, {}
    for key, tensor in state_dict.items():
        storage = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and storage in unique:
            tied[key] = unique[storage]
        else:
            unique.setdefault(storage, key)
    out = {}
    for key, tensor in state_dict.items():
        if key in tied:
            continue
        sparse = (key in names) if names is not None else (
            tensor.dim() == 2 and tensor.is_floating_point() and sparsity(tensor) >= MIN_SPARSITY)
        if sparse:
            for part, value in compress(tensor).items():
                out[f"{key}.{part}"] = value
        else:
            out[key] = tensor.detach().cpu().contiguous()
    meta = {"format": FORMAT, "version": VERSION, "tied": json.dumps(tied)}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    save_state_dict(out, path, metadata=meta)


def load_sparse(path):
    """The dense state dict stored by :func:`save_sparse` (bit-exact).

    Raises:
        CheckpointError: the file is not in this format (or is corrupt).
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a {FORMAT} file (format: {meta.get('format')!r}).")
    state, grouped = {}, {}
    with open_checkpoint(path) as checkpoint:
        keys = set(checkpoint.keys())
        for key in checkpoint.keys():
            base, _, part = key.rpartition(".")
            if part in PARTS and all(f"{base}.{p}" in keys for p in PARTS):
                grouped.setdefault(base, {})[part] = checkpoint.get(key)
            else:
                state[key] = checkpoint.get(key)
    for base, parts in grouped.items():
        state[base] = decompress(parts)
    for alias, key in json.loads(meta.get("tied", "{}")).items():
        state[alias] = state[key]
    return state
