"""Safe checkpoint I/O: load and save state dicts, and read tensors lazily.

Supported inputs:

* pickled PyTorch files ``.pt .pth .bin .pkl`` - always ``torch.load(map_location="cpu", weights_only=True)``,
  memory-mapped when the file is in the zip format; a top-level ``state_dict`` or ``model`` entry is unwrapped as
  the original msModelSlim did;
* ``.safetensors`` files, opened lazily (one tensor at a time, memory-mapped);
* sharded Hugging Face checkpoints (``*.safetensors.index.json`` or ``pytorch_model.bin.index.json``);
* Hugging Face checkpoint directories holding any of the above.

A pickle that needs arbitrary code to load is refused with :class:`UnsafeCheckpointError`; nothing ever falls back
to unsafe loading. Saving is atomic: the file is written under a temporary name in the same directory, then
renamed over the target.
"""
import json
import os
import pickle
import tempfile
import zipfile

from msmodelslim.errors import CheckpointError, SchemaValidateError, UnsafeCheckpointError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl")
SAFETENSORS_SUFFIX = ".safetensors"
INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")
# What a Hugging Face directory may hold, in the order transformers prefers them.
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
UNWRAP_KEYS = ("state_dict", "model")


def check_path_arg(path):
    """``path`` as a str.

    Raises:
        SchemaValidateError: ``path`` is not a str or os.PathLike (or a PathLike of bytes).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise SchemaValidateError(f"path must be str or os.PathLike, not {type(path).__name__}.")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise SchemaValidateError(f"path must be str or os.PathLike of str, not {type(path).__name__}.")
    return path


def error_summary(exc):
    """The first line of an exception's message (its type name when the message is empty), at most 200 chars."""
    lines = str(exc).splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def resolve_weight_path(path):
    """Return the weight file (or index file) that ``path`` designates.

    A file is returned as is when its suffix is supported; a directory is searched for the Hugging Face weight
    files in :data:`HF_WEIGHT_FILES` order.

    Raises:
        SchemaValidateError: ``path`` is not a str or PathLike.
        CheckpointError: the path does not exist, the directory holds no weights, or the suffix is unsupported.
    """
    path = check_path_arg(path)
    if not os.path.exists(path):
        raise CheckpointError(f"Checkpoint path '{path}' does not exist.")
    if os.path.isdir(path):
        for name in HF_WEIGHT_FILES:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise CheckpointError(
            f"Directory '{path}' holds no weights: expected one of {', '.join(HF_WEIGHT_FILES)}.")
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint path '{path}' is not a regular file.")
    if path.endswith(INDEX_SUFFIXES) or path.endswith(SAFETENSORS_SUFFIX) or path.endswith(PICKLE_SUFFIXES):
        return path
    raise CheckpointError(
        f"Unsupported checkpoint file '{path}': expected a {', '.join(PICKLE_SUFFIXES)} or {SAFETENSORS_SUFFIX} "
        f"file, a *.index.json of a sharded checkpoint, or a Hugging Face directory.")


def _torch_load(path):
    """``torch.load`` with ``weights_only=True``, memory-mapped when possible, errors made clear."""
    import torch

    mmap = zipfile.is_zipfile(path)  # mmap needs the zip format (torch >= 1.6 default)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "GLOBAL" in text or "global" in text:
            raise UnsafeCheckpointError(
                f"Checkpoint '{path}' contains pickled objects that need arbitrary code to load; it was refused "
                f"and nothing from it was executed.") from None
        raise CheckpointError(f"Checkpoint '{path}' is not a valid PyTorch file (corrupt or truncated).") from None
    except Exception as exc:  # the unpickler raises many types on damaged input (EOFError, IndexError, ...)
        raise CheckpointError(
            f"Checkpoint '{path}' cannot be read (corrupt or truncated): {error_summary(exc)}") from None


def _unwrap(obj, path):
    if isinstance(obj, dict):
        for key in UNWRAP_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise CheckpointError(f"Checkpoint '{path}' holds a {type(obj).__name__}, expected a dict of tensors.")
    import torch

    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"Checkpoint '{path}' contains no tensors.")
    return tensors


class _PickleReader:
    """A torch pickle (zip format is memory-mapped, so tensors are paged in on use)."""

    def __init__(self, path):
        self.path = path
        self._tensors = _unwrap(_torch_load(path), path)

    def keys(self):
        return list(self._tensors)

    def shape(self, key):
        return tuple(self._tensors[key].shape)

    def dtype(self, key):
        return self._tensors[key].dtype

    def get(self, key):
        return self._tensors[key]

    def close(self):
        self._tensors = {}


_SAFETENSORS_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                            "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                            "BOOL": "bool"}


class _SafetensorsReader:
    """A single safetensors file; tensors are read one at a time from a memory map."""

    def __init__(self, path):
        from safetensors import safe_open

        self.path = path
        try:
            self._file = safe_open(path, framework="pt", device="cpu")
            self._keys = list(self._file.keys())
        except Exception as exc:  # SafetensorError derives from Exception only
            raise CheckpointError(
                f"Checkpoint '{path}' is not a valid safetensors file (corrupt or truncated): {error_summary(exc)}"
            ) from None

    def keys(self):
        return list(self._keys)

    def _slice(self, key):
        if key not in self._keys:
            raise KeyError(key)
        try:
            return self._file.get_slice(key)
        except Exception as exc:  # SafetensorError can come lazily, on first use of a tensor
            raise CheckpointError(f"Tensor '{key}' of '{self.path}' cannot be read: {error_summary(exc)}") from None

    def shape(self, key):
        return tuple(self._slice(key).get_shape())

    def dtype(self, key):
        import torch

        name = _SAFETENSORS_DTYPE_NAMES.get(self._slice(key).get_dtype())
        return getattr(torch, name) if name else self.get(key).dtype

    def get(self, key):
        try:
            return self._file.get_tensor(key)
        except Exception as exc:
            if key not in self._keys:
                raise KeyError(key) from None
            raise CheckpointError(f"Tensor '{key}' of '{self.path}' cannot be read: {error_summary(exc)}") from None

    def close(self):
        self._file = None


class _ShardedReader:
    """A sharded Hugging Face checkpoint: an index json mapping each key to its shard."""

    def __init__(self, index_path):
        self.path = index_path
        try:
            with open(index_path, encoding="utf-8") as handle:
                weight_map = json.load(handle)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"Index '{index_path}' is not a valid sharded-checkpoint index (expected a 'weight_map'): "
                f"{exc}") from None
        folder = os.path.dirname(index_path)
        self._shard_of = {key: os.path.join(folder, shard) for key, shard in weight_map.items()}
        for shard in sorted(set(self._shard_of.values())):
            if not os.path.isfile(shard):
                raise CheckpointError(f"Shard '{shard}' listed in '{index_path}' does not exist.")
        self._readers = {}

    def _reader(self, key):
        shard = self._shard_of[key]
        if shard not in self._readers:
            self._readers[shard] = _open_file(shard)
        return self._readers[shard]

    def keys(self):
        return list(self._shard_of)

    def shape(self, key):
        return self._reader(key).shape(key)

    def dtype(self, key):
        return self._reader(key).dtype(key)

    def get(self, key):
        return self._reader(key).get(key)

    def close(self):
        for reader in self._readers.values():
            reader.close()
        self._readers = {}


def _open_file(path):
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"Checkpoint '{path}' is empty (0 bytes): the file is corrupt or was never written.")
    if path.endswith(INDEX_SUFFIXES):
        return _ShardedReader(path)
    if path.endswith(SAFETENSORS_SUFFIX):
        return _SafetensorsReader(path)
    return _PickleReader(path)


class Checkpoint:
    """Read-only, lazy view of a checkpoint: ``keys()``, ``shape(key)``, ``dtype(key)``, ``get(key)``.

    Use as a context manager or call :meth:`close`. Obtain one with :func:`open_checkpoint`.
    """

    def __init__(self, reader):
        self._reader = reader
        self.path = reader.path

    def keys(self):
        """The tensor names, in file order."""
        return self._reader.keys()

    def shape(self, key):
        """The shape of tensor ``key`` as a tuple, read without loading the tensor where the format allows."""
        return self._reader.shape(key)

    def dtype(self, key):
        """The dtype of tensor ``key``."""
        return self._reader.dtype(key)

    def get(self, key):
        """Tensor ``key`` (on CPU). Raises ``KeyError`` for an unknown key."""
        return self._reader.get(key)

    def __contains__(self, key):
        return key in set(self.keys())

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.keys())

    def close(self):
        """Release file handles."""
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_checkpoint(path):
    """Open a checkpoint file or Hugging Face directory for lazy, tensor-by-tensor reading.

    Raises:
        SchemaValidateError: ``path`` is not a str or PathLike.
        CheckpointError: the path is missing, holds no weights, has an unsupported suffix, or is corrupt.
        UnsafeCheckpointError: a pickle needs arbitrary code to load.
    """
    return Checkpoint(_open_file(resolve_weight_path(path)))


def load_state_dict(path):
    """Load every tensor of a checkpoint file or Hugging Face directory into a ``{name: tensor}`` dict (CPU).

    Raises the same errors as :func:`open_checkpoint`.
    """
    with open_checkpoint(path) as ckpt:
        return {key: ckpt.get(key) for key in ckpt.keys()}


def _detach_for_safetensors(state_dict):
    """CPU, contiguous tensors; tensors sharing storage (tied weights) are copied, as safetensors requires."""
    out, seen = {}, set()
    for key, value in state_dict.items():
        tensor = value.detach().to("cpu").contiguous()
        ptr = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else None
        if ptr is not None and ptr in seen:
            tensor = tensor.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[key] = tensor
    return out


def save_state_dict(state_dict, path, metadata=None):
    """Write ``state_dict`` to ``path`` atomically: safetensors for ``.safetensors``, ``torch.save`` for
    ``.pt/.pth/.bin/.pkl``.

    The data goes to a temporary file in the same directory, which is renamed over ``path`` only once it is
    complete, so a failure leaves any previous file untouched.

    Raises:
        SchemaValidateError: ``state_dict`` is not a dict or ``path`` not a str/PathLike.
        CheckpointError: unsupported suffix, a non-tensor value, a missing parent directory, or ``path`` is a
            directory.
    """
    import torch

    path = check_path_arg(path)
    if not isinstance(state_dict, dict):
        raise SchemaValidateError(f"state_dict must be dict, not {type(state_dict).__name__}.")
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"state_dict entry {bad[0]!r} is not a str -> Tensor pair.")
    if not (path.endswith(SAFETENSORS_SUFFIX) or path.endswith(PICKLE_SUFFIXES)):
        raise CheckpointError(
            f"Unsupported file suffix for '{path}': expected {SAFETENSORS_SUFFIX} or one of {PICKLE_SUFFIXES}.")
    check_parent_directory(path)

    def write(tmp_path):
        if path.endswith(SAFETENSORS_SUFFIX):
            from safetensors.torch import save_file

            save_file(_detach_for_safetensors(state_dict), tmp_path, metadata={"format": "pt", **(metadata or {})})
        else:
            torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, tmp_path)

    atomic_write(path, write)


def check_parent_directory(path):
    """Refuse a file path whose directory does not exist, or that names a directory.

    Raises:
        CheckpointError: naming the path.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CheckpointError(f"Directory '{folder}' of '{path}' does not exist.")
    if os.path.isdir(path):
        raise CheckpointError(f"'{path}' is a directory; give a file name.")


def current_umask():
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, then rename it to ``path``.

    The file gets the mode a plain ``open`` would give it (0666 less the umask), not ``mkstemp``'s 0600. On any
    exception the temporary file is removed, ``path`` is left as it was, and the exception propagates.
    """
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(handle)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
