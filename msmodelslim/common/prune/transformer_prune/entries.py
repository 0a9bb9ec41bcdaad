"""The checkpoint as seen by the steps: for each key of the small model, the checkpoint tensor it comes from and
the index selections to apply to it. Nothing is read until the final parameters are built, one tensor at a time.

Framework-free: indices are NumPy ``int64`` arrays; each backend reads an entry with its own tensors
(:func:`read_numpy` here for NumPy arrays, the torch backend converts the indices when it reads).
"""
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Entry:
    """Tensor ``source`` of the checkpoint, then ``take(index, axis)`` for each ``(axis, index)`` of
    ``selections`` (``index``: a 1-D NumPy ``int64`` array)."""

    source: str
    selections: list = field(default_factory=list)

    def shape(self, checkpoint):
        """The shape after the selections; ``checkpoint.shape(key)`` gives the source's shape."""
        shape = list(checkpoint.shape(self.source))
        for axis, index in self.selections:
            shape[axis] = len(index)
        return tuple(shape)

    def select(self, axis, index):
        """A copy of this entry with one more selection (``index``: any sequence of ints)."""
        return Entry(self.source, self.selections + [(axis, np.asarray(index, dtype=np.int64).reshape(-1))])


def initial_entries(checkpoint):
    """One entry per checkpoint key (``checkpoint.keys()``), unchanged."""
    return {key: Entry(key) for key in checkpoint.keys()}


def read_numpy(entry, checkpoint):
    """The entry's array: ``checkpoint.get(source)`` (a NumPy array) with the selections applied, as a fresh,
    C-contiguous array."""
    array = checkpoint.get(entry.source)
    for axis, index in entry.selections:
        array = np.take(array, index, axis=axis)
    return np.array(array, copy=True, order="C")
