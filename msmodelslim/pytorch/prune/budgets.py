"""Budgets other than the parameter count: multiply-accumulates and measured latency.

* ``"macs"``: the multiply-accumulates of the convolution and linear layers on the sample inputs (as
  :func:`~msmodelslim.pytorch.prune.measure.profile` counts them). A layer's MACs scale with the fraction of its
  output channels and of its input channels it keeps (a depthwise or grouped convolution: of its output channels
  only), so the count of a plan is exact for those layers without running the model.
* ``"latency"``: the measured time of one forward pass on the sample inputs. MACs do not predict latency well
  (memory-bound layers, kernels that prefer some widths), so the MACs ratio is adjusted over a few
  prune-and-measure trials (each applied, timed and undone) until the measured latency ratio lands within
  :data:`LATENCY_TOLERANCE` of the target.
"""
import statistics
import time
from dataclasses import dataclass

import torch

from msmodelslim.pytorch.prune.layers import INPUT, OUTPUT, layer_spec
from msmodelslim.pytorch.prune.planner import ParamCounter
from msmodelslim.pytorch.utils.calibration import eval_mode

BUDGETS = ("params", "macs", "latency")
LATENCY_TOLERANCE = 0.02
LATENCY_TRIALS = 6
OUTPUT_ONLY_KINDS = ("depthwise_conv", "grouped_conv")


class MacCounter(ParamCounter):
    """Exact MACs of the convolution and linear layers as channels are removed from groups."""

    def __init__(self, model, groups, layer_macs):
        super().__init__(model, groups)
        self._layer_macs = {}
        for name, macs in layer_macs.items():
            spec = layer_spec(model.get_submodule(name)) if macs else None
            if spec is not None:
                self._layer_macs[name] = (macs, (OUTPUT,) if spec.kind in OUTPUT_ONLY_KINDS else (OUTPUT, INPUT))
        self.base_total = self._total(self._removed)
        self.current = self.base_total

    def _total(self, removed):
        total = 0.0
        for name, (macs, roles) in self._layer_macs.items():
            factor = 1.0
            for role in roles:
                size = self._role_size.get((name, role))
                if size:
                    factor *= (size - removed[(name, role)]) / size
            total += macs * factor
        return int(round(total))


def check_budget(budget):
    """Raise ``ValueError`` naming ``budget`` unless it is one of :data:`BUDGETS`."""
    if not isinstance(budget, str) or budget not in BUDGETS:
        raise ValueError(f"budget must be one of {list(BUDGETS)}, got {budget!r}.")


def _timer(model):
    synchronize = torch.cuda.synchronize if any(p.is_cuda for p in model.parameters()) else (lambda: None)

    def timed(call):
        synchronize()
        begin = time.perf_counter()
        call(model)
        synchronize()
        return time.perf_counter() - begin

    return timed


def measure_latency(model, call, min_seconds=0.3, min_repeats=5, warmup=2, fastest=False):
    """Median seconds of one forward pass ``call(model)`` (eval mode, no grad), after ``warmup`` calls, over at
    least ``min_repeats`` calls and ``min_seconds`` (``fastest``: the fastest call, the least disturbed one)."""
    timed = _timer(model)
    samples = []
    with eval_mode(model), torch.no_grad():
        for _ in range(warmup):
            call(model)
        started = time.perf_counter()
        while len(samples) < min_repeats or time.perf_counter() - started < min_seconds:
            samples.append(timed(call))
    return min(samples) if fastest else statistics.median(samples)


def latency_ratio(model, reference, call, rounds=7, warmup=2):
    """Latency of ``model`` over that of ``reference`` on ``call``: the two run alternately (A, B, A, B ...) so
    that a change of load hits both, and the fastest run of each is compared (the least disturbed)."""
    timed_model, timed_reference = _timer(model), _timer(reference)
    with eval_mode(model), eval_mode(reference), torch.no_grad():
        for _ in range(warmup):
            call(model)
            call(reference)
        pairs = [(timed_model(call), timed_reference(call)) for _ in range(rounds)]
    return min(a for a, _ in pairs) / max(min(b for _, b in pairs), 1e-12)


@dataclass
class LatencyTrial:
    """One prune-and-measure trial: the MACs ratio planned for and the latency ratio measured."""

    macs_ratio: float
    latency_ratio: float
    planned: object


def search_latency(target, plan_at, ratio_of):
    """The plan whose measured latency ratio is closest to ``target`` (the first within the tolerance).

    ``plan_at(macs_ratio)`` plans at a MACs ratio; ``ratio_of(planned)`` applies it as a trial and returns the
    measured latency ratio to the dense model. The MACs ratio starts at ``target``; it is rescaled by
    ``target / measured`` until two trials bracket the target, then interpolated between the closest bracketing
    trials. The search stops when a plan repeats (the budget cannot go further). Returns ``(planned, trials)``.
    """
    trials = []
    ratio = target
    for _ in range(LATENCY_TRIALS):
        planned = plan_at(ratio)
        if any(t.planned.desc == planned.desc for t in trials):
            break
        measured = ratio_of(planned)
        trials.append(LatencyTrial(ratio, measured, planned))
        if abs(measured - target) <= LATENCY_TOLERANCE:
            break
        next_ratio = _next_macs_ratio(trials, target)
        if abs(next_ratio - ratio) < 1e-3:
            break
        ratio = next_ratio
    best = min(trials, key=lambda t: (abs(t.latency_ratio - target), t.latency_ratio))
    return best.planned, trials


def _next_macs_ratio(trials, target):
    below = [t for t in trials if t.latency_ratio < target]
    above = [t for t in trials if t.latency_ratio > target]
    if below and above:  # interpolate between the closest trials on either side
        low = max(below, key=lambda t: t.latency_ratio)
        high = min(above, key=lambda t: t.latency_ratio)
        share = (target - low.latency_ratio) / (high.latency_ratio - low.latency_ratio)
        return low.macs_ratio + share * (high.macs_ratio - low.macs_ratio)
    last = trials[-1]
    return min(max(last.macs_ratio * target / max(last.latency_ratio, 1e-6), 0.02), 1.0)
