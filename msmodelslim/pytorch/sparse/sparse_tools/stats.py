"""Statistics of a layer's inputs, accumulated over every calibration batch (streamed, float32, on the layer's
device): per-feature sums of squares (Wanda), sums (means and variances for prune-and-regrow), X^T X (SparseGPT;
its upper triangle only, mirrored when read), and a small sample of input rows for measuring the reconstruction
error."""
import weakref

import torch

from msmodelslim.errors import ModelslimError

SAMPLE_ROWS = 128
GRAM_BLOCKS = 4  # X^T X is symmetric: only the column blocks on and above the diagonal are accumulated


def add_upper_gram(target, rows, blocks=GRAM_BLOCKS):
    """``target += rows.T @ rows`` on the column blocks on and above the diagonal only: about 30 % less work than the
    whole product on a CPU (the blocks below are left as they are; :meth:`LayerStats.symmetric_hessian` mirrors)."""
    columns = rows.shape[1]
    step = -(-columns // blocks)
    for start in range(0, columns, step):
        target[start:start + step, start:].addmm_(rows[:, start:start + step].T, rows[:, start:])


class NonFiniteActivation(ModelslimError, ValueError):
    """NaN or inf values reached a layer during calibration."""

    code = 601


class LayerStats:
    """Streaming statistics of the inputs of one layer with ``columns`` input features."""

    def __init__(self, name, columns, device, hessian=False, moments=False, sample_rows=SAMPLE_ROWS):
        self.name = name
        self.columns = columns
        self.tokens = 0
        self.input_sq_sum = torch.zeros(columns, dtype=torch.float32, device=device)
        self.input_sum = torch.zeros(columns, dtype=torch.float32, device=device) if moments else None
        self.hessian = torch.zeros(columns, columns, dtype=torch.float32, device=device) if hessian else None
        self.sample_rows = sample_rows
        self._sample = []
        self.derived = {}  # what a method computed from these statistics, kept for the layers that share them

    def add(self, inputs):
        """Add one batch of inputs (any leading shape, last dimension = features).

        Raises:
            NonFiniteActivation: the batch holds NaN or inf values.
        """
        rows = inputs.detach().reshape(-1, self.columns).float()
        squares = rows.square().sum(0)
        # a NaN or inf anywhere makes its column's sum non-finite: one check of `columns` values, not of every entry
        if not bool(torch.isfinite(squares).all()):
            finite = bool(torch.isfinite(rows).all())
            problem = "values too large for float32 statistics" if finite else "NaN or inf values"
            raise NonFiniteActivation(f"The inputs of layer '{self.name}' contain {problem}; calibration needs finite "
                                      f"activations.")
        self.tokens += rows.shape[0]
        self.input_sq_sum += squares
        if self.input_sum is not None:
            self.input_sum += rows.sum(0)
        if self.hessian is not None:
            add_upper_gram(self.hessian, rows)
        taken = sum(s.shape[0] for s in self._sample)
        if taken < self.sample_rows:
            self._sample.append(rows[: self.sample_rows - taken].clone())

    def symmetric_hessian(self):
        """X^T X of every input row added so far (float32): the accumulated upper triangle, mirrored."""
        upper = self.hessian.triu()
        return upper + upper.triu(1).T

    @property
    def input_mean(self):
        return self.input_sum / max(self.tokens, 1)

    @property
    def input_var(self):
        """Per-feature variance (biased)."""
        return (self.input_sq_sum / max(self.tokens, 1) - self.input_mean.square()).clamp(min=0)

    @property
    def sample(self):
        """Up to ``sample_rows`` input rows, ``[rows, columns]``."""
        return torch.cat(self._sample) if self._sample else torch.zeros(0, self.columns)


class Ungroupable(ModelslimError):
    """Layers looked as if they shared their input, but not on every call: collect without sharing. (A
    ModelslimError, so that the calibration loops pass it through unchanged; it never reaches the user.)"""


class SharedInputStats:
    """Statistics of several layers' inputs, one :class:`LayerStats` per distinct input tensor.

    Layers called on the very same tensor in every forward pass (q/k/v projections, gate/up, a fused qkv's
    siblings) share one ``LayerStats``: it is accumulated once instead of once per layer, and a method can reuse
    anything derived from it (SparseGPT's inverse Hessian). A layer is bound to a group on its first call; if a
    later call contradicts the binding (it reads a tensor another group added, reads the same tensor twice, or a
    tensor changed in place), :class:`Ungroupable` is raised and the caller collects again without sharing.
    ``make(name)`` creates a layer's own statistics.
    """

    def __init__(self, make):
        self._make = make
        self.by_layer = {}
        self._calls = {}
        self._adds = {}
        self._seen = []  # [(weakref to an input tensor, its version, the LayerStats it went into, consumer names)]

    def _entry(self, tensor):
        alive = []
        found = None
        for entry in self._seen:
            if entry[0]() is None:
                continue
            alive.append(entry)
            if entry[0]() is tensor:
                found = entry
        self._seen = alive
        if found is not None and found[1] != tensor._version:
            raise Ungroupable("an input tensor was changed in place between two layers")
        return found

    def add(self, name, tensor):
        """Record one call of layer ``name`` on ``tensor``."""
        self._calls[name] = self._calls.get(name, 0) + 1
        entry = self._entry(tensor)
        stats = self.by_layer.get(name)
        if entry is not None:
            if name in entry[3] or (stats is not None and stats is not entry[2]):
                raise Ungroupable(f"layer '{name}' does not always share its input with the same layers")
            self.by_layer.setdefault(name, entry[2])
            entry[3].add(name)
            return
        if stats is None:
            stats = self.by_layer[name] = self._make(name)
        stats.add(tensor)
        self._adds[id(stats)] = self._adds.get(id(stats), 0) + 1
        self._seen.append((weakref.ref(tensor), tensor._version, stats, {name}))

    def result(self, names):
        """``{name: LayerStats}`` for ``names`` (shared objects repeated); layers never called get their own empty
        statistics.

        Raises:
            Ungroupable: a layer of a group was called a different number of times than its group's input.
        """
        for name in names:
            stats = self.by_layer.get(name)
            if stats is not None and self._calls[name] != self._adds[id(stats)]:
                raise Ungroupable(f"layer '{name}' was not called on every input of its group")
        return {name: self.by_layer.get(name) or self._make(name) for name in names}
