"""``SparseConfig``: what to sparsify and how, validated like the original."""
import math
import numbers
import re
from dataclasses import dataclass, field, fields

METHODS = ("magnitude", "hessian", "par", "par_v2")
ALIASES = {"wanda": "magnitude", "sparsegpt": "hessian", "dsnot": "par_v2", "weight_magnitude": "weight_magnitude"}
_PATTERN = re.compile(r"([0-9]+):([0-9]+)")  # used with fullmatch: "2:4\n" is refused


@dataclass
class SparseConfig:
    """Configuration of :class:`Compressor`.

    The first five fields are the original's, with its defaults and errors:

    * ``mode``: ``"sparse"`` only;
    * ``method``: ``"magnitude"`` (Wanda: |W|·‖X‖), ``"hessian"`` (SparseGPT, then ``reconstruct``), ``"par"`` and
      ``"par_v2"`` (Wanda mask refined by DSnoT-style prune-and-regrow); aliases ``"wanda"``, ``"sparsegpt"``,
      ``"dsnot"`` (= ``"par_v2"``), and ``"weight_magnitude"`` (plain |W|, data-free);
    * ``sparse_ratio``: a float in (0, 1), the fraction of weights set to zero;
    * ``progressive``: sparsify in stages (MLP projections, then attention output, then q/k/v, then the rest);
    * ``uniform``: ``False`` gives non-uniform per-layer ratios with the same overall ratio (OWL).

    New keyword arguments (defaults keep old calls unchanged): ``pattern`` (``"unstructured"`` or ``"N:M"``: N zeros
    in every M consecutive weights of a row), ``ignore`` (layer-name patterns left dense: glob, or ``"re:<regex>"``),
    ``owl_lambda`` and ``owl_m`` (OWL's λ and M), ``blocksize`` and ``percdamp`` (SparseGPT),
    ``max_swaps`` and ``swap_threshold`` (prune-and-regrow; None: the method's own), ``true_sequential``
    (inside a block, each group of layers that read one input is calibrated on the outputs of the layers before
    it, already sparsified - e.g. o_proj after q/k/v - at the cost of one more pass over the block per group),
    ``reconstruct`` (once a layer's mask is chosen, its kept weights are re-solved by least squares to reproduce
    the dense layer's outputs on the calibration inputs; None, the default, means on for ``hessian`` and off for
    the others; ``hessian`` with ``reconstruct=False`` is plain SparseGPT, as the original).

    Every field is checked here, at construction, never later in ``compress``.

    Raises:
        ValueError / TypeError: as the original for its fields. For the new ones: TypeError when a value has the
            wrong type (a str, None, or a bool where a number or int is expected), ValueError when it is out of
            range, NaN or infinite (``owl_lambda`` in [0, 0.5), ``owl_m`` finite > 0, ``blocksize`` int >= 1,
            ``percdamp`` in (0, 1), ``max_swaps`` int >= 0 or None, ``swap_threshold`` finite >= 0 or None,
            ``pattern`` exactly ``"N:M"`` with 0 < N < M, no surrounding whitespace). The message names the field,
            the value and what was expected.
    """

    mode: str = "sparse"
    method: str = "magnitude"
    sparse_ratio: float = 0.5
    progressive: bool = False
    uniform: bool = True
    pattern: str = field(default="unstructured", repr=False)
    ignore: list = field(default_factory=list, repr=False)
    owl_lambda: float = field(default=0.08, repr=False)
    owl_m: float = field(default=5.0, repr=False)
    blocksize: int = field(default=128, repr=False)
    percdamp: float = field(default=0.01, repr=False)
    max_swaps: int = field(default=None, repr=False)
    swap_threshold: float = field(default=None, repr=False)
    true_sequential: bool = field(default=False, repr=False)
    reconstruct: bool = field(default=None, repr=False)

    def __post_init__(self):
        if self.mode != "sparse":
            raise ValueError("mode should be 'sparse'")
        if self.method not in METHODS and self.method not in ALIASES:
            raise ValueError(f"optimizer should be in {list(METHODS) + list(ALIASES)}")
        if not isinstance(self.sparse_ratio, float):
            raise TypeError("sparse_ratio is invalid, please check it.")
        if not 0 < self.sparse_ratio < 1:
            raise ValueError("sparse_ratio should be between 0 and 1")
        if not isinstance(self.progressive, bool):
            raise TypeError("progressive is invalid, please check it.")
        if not isinstance(self.uniform, bool):
            raise TypeError("uniform is invalid, please check it.")
        self._check_extras()

    def _check_extras(self):
        if self.pattern != "unstructured":
            match = _PATTERN.fullmatch(self.pattern) if isinstance(self.pattern, str) else None
            if match is None or not 0 < int(match[1]) < int(match[2]):
                raise ValueError(f"pattern must be 'unstructured' or 'N:M' with 0 < N < M, got {self.pattern!r}")
            if not self.uniform:
                raise ValueError("uniform=False (OWL) needs pattern='unstructured': an N:M pattern fixes every "
                                 "layer's ratio at N/M.")
        if not isinstance(self.ignore, (list, tuple)) or not all(isinstance(p, str) for p in self.ignore):
            raise TypeError(f"ignore must be a list of name patterns (str), got {self.ignore!r}")
        for pattern in self.ignore:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise ValueError(f"ignore pattern {pattern!r} is not a valid regular expression: {exc}") from None
        _check_real("owl_lambda", self.owl_lambda, "a number in [0, 0.5)", lambda v: 0 <= v < 0.5)
        _check_real("owl_m", self.owl_m, "a finite number > 0", lambda v: 0 < v < math.inf)
        _check_int("blocksize", self.blocksize, "an int >= 1", lambda v: v >= 1)
        _check_real("percdamp", self.percdamp, "a number in (0, 1)", lambda v: 0 < v < 1)
        if not isinstance(self.true_sequential, bool):
            raise TypeError(f"true_sequential must be a bool, got {self.true_sequential!r} "
                            f"({type(self.true_sequential).__name__}).")
        if self.reconstruct is not None and not isinstance(self.reconstruct, bool):
            raise TypeError(f"reconstruct must be True, False or None (on for hessian only), got {self.reconstruct!r} "
                            f"({type(self.reconstruct).__name__}).")
        if self.max_swaps is not None:
            _check_int("max_swaps", self.max_swaps, "a non-negative int or None", lambda v: v >= 0)
        if self.swap_threshold is not None:
            _check_real("swap_threshold", self.swap_threshold, "a finite number >= 0 or None",
                        lambda v: 0 <= v < math.inf)

    @property
    def algorithm(self):
        """The method name with aliases resolved: magnitude, hessian, par, par_v2 or weight_magnitude."""
        return ALIASES.get(self.method, self.method)

    @property
    def reconstructs(self):
        """Whether the kept weights are re-solved by least squares after each mask: ``reconstruct``, or when it is
        None, True for ``hessian`` only."""
        return self.algorithm == "hessian" if self.reconstruct is None else self.reconstruct

    @property
    def n_m(self):
        """``(N, M)`` of an N:M pattern, or None for unstructured sparsity."""
        match = _PATTERN.fullmatch(self.pattern)
        return (int(match[1]), int(match[2])) if match else None

    @property
    def layer_ratio(self):
        """The sparsity of each layer under a uniform allocation: N/M for N:M patterns, else sparse_ratio."""
        return self.n_m[0] / self.n_m[1] if self.n_m else self.sparse_ratio

    def __repr__(self):
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                 if f.repr or getattr(self, f.name) != (f.default_factory() if callable(f.default_factory)
                                                        else f.default)]
        return f"SparseConfig({', '.join(shown)})"


def _check_real(name, value, expected, valid):
    """Raise TypeError unless ``value`` is a real number (not a bool), ValueError unless ``valid(value)``
    (NaN never is: every comparison with it is False)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {value!r} ({type(value).__name__}).")
    if not valid(float(value)):
        raise ValueError(f"{name} must be {expected}, got {value!r}.")


def _check_int(name, value, expected, valid):
    """Raise TypeError unless ``value`` is an int (not a bool), ValueError unless ``valid(value)``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {expected}, got {value!r} ({type(value).__name__}).")
    if not valid(int(value)):
        raise ValueError(f"{name} must be {expected}, got {value!r}.")
