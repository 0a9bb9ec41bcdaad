"""``SparseConfig``: what to sparsify and how, validated like the original."""
import re
from dataclasses import dataclass, field, fields

METHODS = ("magnitude", "hessian", "par", "par_v2")
ALIASES = {"wanda": "magnitude", "sparsegpt": "hessian", "dsnot": "par_v2", "weight_magnitude": "weight_magnitude"}
_PATTERN = re.compile(r"^(\d+):(\d+)$")


@dataclass
class SparseConfig:
    """Configuration of :class:`Compressor`.

    The first five fields are the original's, with its defaults and errors:

    * ``mode``: ``"sparse"`` only;
    * ``method``: ``"magnitude"`` (Wanda: |W|·‖X‖), ``"hessian"`` (SparseGPT), ``"par"`` and ``"par_v2"`` (Wanda mask
      refined by DSnoT-style prune-and-regrow); aliases ``"wanda"``, ``"sparsegpt"``, ``"dsnot"`` (= ``"par_v2"``),
      and ``"weight_magnitude"`` (plain |W|, data-free);
    * ``sparse_ratio``: a float in (0, 1), the fraction of weights set to zero;
    * ``progressive``: sparsify in stages (MLP projections, then attention output, then q/k/v, then the rest);
    * ``uniform``: ``False`` gives non-uniform per-layer ratios with the same overall ratio (OWL).

    New keyword arguments (defaults keep old calls unchanged): ``pattern`` (``"unstructured"`` or ``"N:M"``: N zeros
    in every M consecutive weights of a row), ``ignore`` (layer-name patterns left dense: glob, or ``"re:<regex>"``),
    ``owl_lambda`` and ``owl_m`` (OWL's λ and M), ``blocksize`` and ``percdamp`` (SparseGPT),
    ``max_swaps`` and ``swap_threshold`` (prune-and-regrow; None: the method's own).

    Raises:
        ValueError / TypeError: as the original for its fields; ValueError for the new ones.
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
            match = _PATTERN.match(self.pattern) if isinstance(self.pattern, str) else None
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
        if not 0 <= float(self.owl_lambda) < 0.5 or float(self.owl_m) <= 0:
            raise ValueError(f"owl_lambda must be in [0, 0.5) and owl_m > 0, got {self.owl_lambda}, {self.owl_m}")
        if not isinstance(self.blocksize, int) or self.blocksize < 1 or not 0 < float(self.percdamp) < 1:
            raise ValueError(f"blocksize must be a positive int and percdamp in (0, 1), got {self.blocksize}, "
                             f"{self.percdamp}")
        if self.max_swaps is not None and (not isinstance(self.max_swaps, int) or self.max_swaps < 0):
            raise ValueError(f"max_swaps must be a non-negative int or None, got {self.max_swaps!r}")

    @property
    def algorithm(self):
        """The method name with aliases resolved: magnitude, hessian, par, par_v2 or weight_magnitude."""
        return ALIASES.get(self.method, self.method)

    @property
    def n_m(self):
        """``(N, M)`` of an N:M pattern, or None for unstructured sparsity."""
        match = _PATTERN.match(self.pattern)
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
