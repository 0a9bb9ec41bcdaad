"""Statistics of a layer's inputs, accumulated over every calibration batch (streamed, float32, on the layer's
device): per-feature sums of squares (Wanda), sums (means and variances for prune-and-regrow), X^T X (SparseGPT),
and a small sample of input rows for measuring the reconstruction error."""
import torch

from msmodelslim.errors import ModelslimError

SAMPLE_ROWS = 128


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

    def add(self, inputs):
        """Add one batch of inputs (any leading shape, last dimension = features).

        Raises:
            NonFiniteActivation: the batch holds NaN or inf values.
        """
        rows = inputs.detach().reshape(-1, self.columns).float()
        if not bool(torch.isfinite(rows).all()):
            raise NonFiniteActivation(f"The inputs of layer '{self.name}' contain NaN or inf values; calibration "
                                      f"needs finite activations.")
        self.tokens += rows.shape[0]
        self.input_sq_sum += rows.square().sum(0)
        if self.input_sum is not None:
            self.input_sum += rows.sum(0)
        if self.hessian is not None:
            self.hessian.addmm_(rows.T, rows)
        taken = sum(s.shape[0] for s in self._sample)
        if taken < self.sample_rows:
            self._sample.append(rows[: self.sample_rows - taken].clone())

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
