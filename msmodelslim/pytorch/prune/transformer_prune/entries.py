"""The checkpoint as seen by the steps: for each key of the small model, the checkpoint tensor it comes from and
the index selections to apply to it. Nothing is read until the final state dict is built, one tensor at a time."""
from dataclasses import dataclass, field

import torch


@dataclass
class Entry:
    """Tensor ``source`` of the checkpoint, then ``index_select(axis, index)`` for each ``(axis, index)``."""

    source: str
    selections: list = field(default_factory=list)

    def shape(self, checkpoint):
        shape = list(checkpoint.shape(self.source))
        for axis, index in self.selections:
            shape[axis] = len(index)
        return tuple(shape)

    def select(self, axis, index):
        """A copy of this entry with one more selection."""
        return Entry(self.source, self.selections + [(axis, torch.as_tensor(index, dtype=torch.long))])

    def read(self, checkpoint):
        """The tensor, read from the checkpoint and selected (a fresh, contiguous tensor)."""
        tensor = checkpoint.get(self.source)
        for axis, index in self.selections:
            tensor = tensor.index_select(axis, index)
        return tensor.contiguous() if self.selections else tensor.clone()


def initial_entries(checkpoint):
    """One entry per checkpoint key, unchanged."""
    return {key: Entry(key) for key in checkpoint.keys()}
