"""Feeding calibration batches to a MindSpore Cell in PyNative mode and watching its sub-cells with forward hooks.

One convention, as the PyTorch backend's: a ``Tensor`` is fed as ``cell(x)``, a ``list``/``tuple`` as
``cell(*x)``, a ``dict`` as ``cell(**x)``. The hooks only read; they are removed on every path, and the Cell's
train/eval flags are put back, so the Cell is left as it was found.
"""
import contextlib

import mindspore
import numpy as np

from msmodelslim.errors import ModelslimError


def call_batch(cell, batch, where):
    """``cell`` called on one batch by the convention of this module; returns its output.

    Raises:
        TypeError: ``batch`` is not a Tensor, list, tuple or dict (``where`` names it).
    """
    if isinstance(batch, mindspore.Tensor):
        return cell(batch)
    if isinstance(batch, (list, tuple)):
        return cell(*batch)
    if isinstance(batch, dict):
        return cell(**batch)
    raise TypeError(f"{where} must be a mindspore Tensor, a list/tuple of arguments or a dict of keyword arguments "
                    f"for the Cell, not {type(batch).__name__}.")


def first_tensor(value):
    """The first mindspore Tensor in a Cell input/output (a Tensor, or a tuple/list/dict holding one), else None."""
    if isinstance(value, mindspore.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        found = first_tensor(item)
        if found is not None:
            return found
    return None


def float_array(tensor):
    """A floating-point Tensor as a NumPy array (bfloat16 widened to float32, which is exact), else None."""
    if not isinstance(tensor, mindspore.Tensor) or not tensor.is_floating_point():
        return None
    if tensor.dtype == mindspore.bfloat16:
        tensor = tensor.astype(mindspore.float32)
    return tensor.asnumpy()


def check_samples(dataset, what):
    """Check every batch's type and that its first tensor holds an element.

    Raises:
        TypeError: a batch that is not a Tensor, list, tuple or dict.
        ValueError: a batch whose first tensor has no element (0 samples); the message names it.
    """
    for index, batch in enumerate(dataset):
        if not isinstance(batch, (mindspore.Tensor, list, tuple, dict)):
            raise TypeError(f"{what}: dataset[{index}] must be a mindspore Tensor, a list/tuple of arguments or a "
                            f"dict of keyword arguments for the Cell, not {type(batch).__name__}.")
        tensor = first_tensor(batch)
        if tensor is not None and tensor.size == 0:
            raise ValueError(f"{what} needs at least one sample: dataset[{index}] is empty "
                             f"(shape {tuple(tensor.shape)}).")


def run_batches(cell, dataset):
    """Call ``cell`` on every batch of ``dataset``, outputs discarded.

    Raises:
        RuntimeError: the Cell fails on a batch; the message names the batch index.
    """
    for index, batch in enumerate(dataset):
        where = f"dataset[{index}]"
        try:
            call_batch(cell, batch, where)
        except ModelslimError:
            raise
        except Exception as exc:
            raise RuntimeError(f"{where}: the big Cell failed on this batch ({type(exc).__name__}: {exc})") from exc


@contextlib.contextmanager
def forward_hooks(watched, with_kwargs=False):
    """Register ``hook`` as a forward hook on each ``(cell, hook)`` of ``watched``; removed on exit, also on error.

    ``hook(cell, args, output)``, or ``hook(cell, args, kwargs, output)`` with ``with_kwargs``.
    """
    handles = []
    try:
        for cell, hook in watched:
            handles.append(cell.register_forward_hook(hook, with_kwargs=with_kwargs))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def eval_mode(cell):
    """Put ``cell`` in eval mode for the block, then restore each sub-cell's own ``training`` flag and phase.

    A Cell already in eval mode everywhere is not touched at all.
    """
    cells = [sub for _, sub in cell.cells_and_names()]
    flags = [(sub, bool(getattr(sub, "training", False)), sub.phase) for sub in cells]
    if not any(training for _, training, _ in flags):
        yield cell
        return
    cell.set_train(False)
    try:
        yield cell
    finally:
        for sub, training, phase in flags:
            sub.add_flags(training=training)
            sub.phase = phase


def cosine_distance_sum(before, after):
    """``(sum of 1 - cos, number of vectors)`` between the last-axis vectors of two equal-shape arrays, in
    float64; a zero vector counts as cosine 0, as ``torch.nn.functional.cosine_similarity`` with its epsilon."""
    width = before.shape[-1]
    a = np.asarray(before, dtype=np.float64).reshape(-1, width)
    b = np.asarray(after, dtype=np.float64).reshape(-1, width)
    norms = np.maximum(np.linalg.norm(a, axis=1), 1e-8) * np.maximum(np.linalg.norm(b, axis=1), 1e-8)
    cosine = (a * b).sum(1) / norms
    return float((1.0 - cosine).sum()), cosine.shape[0]
