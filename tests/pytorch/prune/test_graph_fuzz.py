"""Graph fuzzer for PruneTorch on plain-torch models (issue 13): generated models (tests/zoo/graph_fuzz.py) are
either pruned as documented or refused with a documented error, never crashed nor left broken.

For each model: **pruned** - the outputs keep their shapes, the parameter count lands within 2 points of the
budget or a logged reason says why it stopped short, and ``prune_by_desc(desc)`` on a fresh copy of the original
gives the same parameter shapes and equal outputs; or **refused** - a ``ModelslimError``, or a ``ValueError`` /
``TypeError`` that msmodelslim raises, with the model unchanged (state dict, Parameter objects, outputs).
Hypothesis is derandomized, so CI sees the same 100 models every run; a failure prints the model's recipe.
Set ``GRAPH_FUZZ_SHRINK=1`` to let hypothesis shrink a failure to a smaller model (slow).
"""
import os
import signal
from contextlib import contextmanager

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, note, settings
from torch import nn

from zoo import graph_fuzz
from zoo.graph_fuzz import CRASHED, PRUNED, REFUSED, SHORT, attempt, build, cases

TRACE_TIMEOUT_S = 15.0  # the graphs are small: a trace takes well under a second
HANG_S = 120  # one model may not take longer than this, hang or not

PHASES = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if os.environ.get("GRAPH_FUZZ_SHRINK")
                                                          else [])
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None, phases=PHASES,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextmanager
def hang_guard(seconds):
    """Fail (TimeoutError) instead of hanging, where SIGALRM exists."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def alarm(signum, frame):
        raise TimeoutError(f"pruning one generated model took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is faster, and much faster than two on a busy machine (no OpenMP spinning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def explain(case, result):
    error = result.get("error") or {}
    return (f"{result['category']}: {result.get('problem')} (stage {result.get('stage')})\n"
            f"{error.get('traceback', '')}\nnotes: {result.get('notes')}\n{case!r}")


# ------------------------------------------------------------------------------------------ the generator
def test_the_generator_builds_models_that_run_and_repeat():
    for seed in range(100):
        case = build(seed)  # build() runs the model and checks its outputs (graph_fuzz.check)
        again = build(seed)
        assert case.recipe == again.recipe
        out, out_again = graph_fuzz.output_tensors(case.run()), graph_fuzz.output_tensors(again.run(again.model))
        assert all(torch.equal(a, b) for a, b in zip(out, out_again)), seed


def test_the_generator_covers_every_building_block():
    ops, layers, forms, modes = set(), set(), set(), set()
    for seed in range(300):
        case = build(seed)
        ops |= {step[0] for step in case.model.steps}
        layers |= {type(m) for m in case.model.modules()}
        forms.add(type(case.inputs).__name__ if case.model.n_inputs == 1 else f"{case.model.n_inputs} inputs")
        modes.add(case.model.mode)
        if any(isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels for m in case.model.modules()):
            layers.add("grouped conv")
        if any(isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 for m in case.model.modules()):
            layers.add("depthwise conv")
        if any(not name.count(".") for name, _ in case.model.named_parameters()):
            layers.add("bare parameter")
        if any(step[3] == other[3] and step[0] == other[0] == "call" and step is not other
               for step in case.model.steps for other in case.model.steps):
            layers.add("module called twice")
    assert set(graph_fuzz._OPS) <= ops
    assert {nn.Conv2d, nn.Linear, nn.Embedding, nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm, nn.GroupNorm,
            nn.MultiheadAttention, "grouped conv", "depthwise conv", "bare parameter",
            "module called twice"} <= layers
    assert {"tensor", "tuple", "dict"} <= modes
    assert {"Tensor", "2 inputs", "3 inputs"} <= forms


@FUZZ
@given(case=cases())
def test_hypothesis_draws_valid_models(case):
    graph_fuzz.check(case)


# ------------------------------------------------------------------------------------------ PruneTorch
@FUZZ
@given(case=cases())
def test_generated_models_are_pruned_or_refused(case):
    note(repr(case))
    with hang_guard(HANG_S):
        result = attempt(case, trace_timeout=TRACE_TIMEOUT_S)
    assert result["category"] in (PRUNED, SHORT, REFUSED), explain(case, result)
    assert result["category"] != CRASHED
    out = case.run()  # pruned or refused, the model still runs
    assert all(torch.isfinite(t).all() for t in graph_fuzz.output_tensors(out))
