"""The settings of :func:`msmodelslim.common.slim.slim_model`, checked before any work."""
import math
import numbers
from dataclasses import asdict, dataclass, fields


BUDGET_KINDS = ("params", "non_embedding_params", "latency")
OBJECTIVES = ("auto", "lm", "embedding", "classification")


@dataclass
class SlimConfig:
    """What ``slim_model`` builds and how long it trains.

    ``budget``: the fraction of the dense model's ``budget_kind`` the slim model keeps (``"params"``: every
    parameter; ``"non_embedding_params"``: all but the token-embedding and output-embedding matrices;
    ``"latency"``: the time of one forward pass over a few held-out rows on the teacher's device, measured), met
    within ``tolerance`` (fraction of the dense size). ``train_tokens``: tokens of distillation of the chosen
    architecture; each of the ``top_k`` best candidates first gets ``search_fraction`` of it. ``objective``:
    ``"lm"`` (forward KL on next-token logits), ``"embedding"`` (cosine of the last hidden states, for encoders),
    ``"classification"`` (forward KL on the class logits of a ``…ForSequenceClassification`` model), ``"auto"``
    (``lm`` for causal language models, ``classification`` for sequence classifiers, else ``embedding``).
    ``hidden_weight``: the weight of the hidden-state losses added to the objective's (0: none): the output of each
    student layer against the output of the teacher layer it was filled from, 1 - cosine at every token, through a
    learned linear adaptor when the hidden sizes differ; the weight is shared out over the layers.
    """

    budget: float = 0.5
    budget_kind: str = "params"
    tolerance: float = 0.02
    train_tokens: int = 200_000
    seq_len: int = 256
    batch_size: int = 8
    micro_batch_size: int = 0  # 0: the whole batch at once; else gradient accumulation over micro-batches
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    label_weight: float = 0.5  # labelled data (classification): weight of the labels' cross-entropy, as set_hard_label
    hidden_weight: float = 0.0  # > 0: plus a cosine loss between each student layer and the teacher layer it came from
    objective: str = "auto"
    align: int = 64
    max_candidates: int = 12
    top_k: int = 3
    search_fraction: float = 0.05
    calib_samples: int = 16
    eval_samples: int = 16
    eval_every: int = 0  # 0: ten evaluations over the run
    checkpoint_every: int = 50
    seed: int = 0

    def validate(self):
        """Return the config after checking every field.

        Raises:
            TypeError: a field of the wrong type (the message names it).
            ValueError: a value outside its range, e.g. ``budget`` not in (0, 1).
        """
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
                try:
                    value = float(value)  # ints and NumPy scalars too
                except OverflowError:
                    raise ValueError(f"SlimConfig.{field.name} must be a finite number, got an integer of "
                                     f"{len(str(abs(value)))} digits.") from None
                setattr(self, field.name, value)
            expected = field.type
            if not isinstance(value, expected) or isinstance(value, bool):
                raise TypeError(f"SlimConfig.{field.name} must be {expected.__name__}, not {type(value).__name__}.")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"SlimConfig.{field.name} must be a finite number, got {value}.")
        _in_open_unit(self, "budget")
        _in_open_unit(self, "tolerance")
        _in_open_unit(self, "label_weight")
        _choice(self, "budget_kind", BUDGET_KINDS)
        _choice(self, "objective", OBJECTIVES)
        for name in ("train_tokens", "seq_len", "batch_size", "align", "max_candidates", "top_k", "calib_samples",
                     "eval_samples", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"SlimConfig.{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("micro_batch_size", "eval_every", "seed", "hidden_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"SlimConfig.{name} must be 0 or more, got {getattr(self, name)}.")
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(f"SlimConfig.batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                             f"({self.micro_batch_size}).")
        for name in ("learning_rate", "temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SlimConfig.{name} must be positive, got {getattr(self, name)}.")
        for name in ("weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"SlimConfig.{name} must be 0 or more, got {getattr(self, name)}.")
        for name in ("warmup_fraction", "search_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"SlimConfig.{name} must be in [0, 1), got {getattr(self, name)}.")
        return self

    def to_dict(self):
        return asdict(self)


def _in_open_unit(config, name):
    value = getattr(config, name)
    if not 0 < value < 1:
        raise ValueError(f"SlimConfig.{name} must be between 0 and 1 (exclusive), got {value}.")


def _choice(config, name, choices):
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"SlimConfig.{name} must be one of {list(choices)}, got {value!r}.")
