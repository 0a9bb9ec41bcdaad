"""MindSpore weight files for ``prune_model_weight``: ``.ckpt`` and MindSpore's ``.safetensors``, read with
``mindspore.load_checkpoint`` and served as NumPy arrays."""
import os

import mindspore
import numpy as np

from msmodelslim.errors import CheckpointError

FORMATS = {".ckpt": "ckpt", ".safetensors": "safetensors"}


def checkpoint_format(path, given=None):
    """``(format, name to read)``: ``"ckpt"`` or ``"safetensors"`` and the name that says so, the one the user
    gave (``given``) when its suffix is known, else the existing, resolved ``path``. MindSpore reads only names
    ending in the format's suffix, and a link named ``model.ckpt`` may point to a file without one.

    Raises:
        CheckpointError: a directory, or a name that ends in neither ``.ckpt`` nor ``.safetensors``.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"weight_file_path: {path} is a directory; MindSpore weights must be one .ckpt or "
                              ".safetensors file.")
    for name in (given, path):
        suffix = os.path.splitext(name or "")[1].lower()
        if suffix in FORMATS:
            return FORMATS[suffix], name
    raise CheckpointError(f"weight_file_path: {given or path} is not a MindSpore weight file; the name must end in "
                          ".ckpt (or .safetensors).")


class MindSporeCheckpoint:
    """A MindSpore weight file: ``keys()``, ``shape(key)`` and ``get(key)`` (a fresh NumPy array; bfloat16 is
    widened to float32, which is exact). The whole file is read at once: ``mindspore.load_checkpoint`` has no
    lazy access.

    Raises (on construction):
        CheckpointError: not a ``.ckpt`` / ``.safetensors`` name; the file is empty, truncated, corrupt, or holds
            no tensor (the message names it).
    """

    def __init__(self, path, given=None):
        self.path = path
        file_format, name = checkpoint_format(path, given)
        if os.path.getsize(path) == 0:
            raise CheckpointError(f"weight_file_path: the checkpoint {path} is empty.")
        try:
            self._params = mindspore.load_checkpoint(name, format=file_format)
        except Exception as exc:  # MindSpore raises ValueError/RuntimeError/OSError with its own wording
            raise CheckpointError(f"weight_file_path: cannot read the MindSpore checkpoint {path}: {exc}") from exc
        # a .ckpt may also hold non-tensor entries (strings, numbers saved with append_dict): not weights
        self._params = {k: v for k, v in self._params.items() if isinstance(v, mindspore.Tensor)}
        if not self._params:
            raise CheckpointError(f"weight_file_path: the checkpoint {path} holds no parameter.")

    def keys(self):
        return list(self._params)

    def shape(self, key):
        return tuple(self._params[key].shape)

    def get(self, key):
        value = self._params[key]
        if value.dtype == mindspore.bfloat16:
            value = value.astype(mindspore.float32)
        return np.array(value.asnumpy(), copy=True)
