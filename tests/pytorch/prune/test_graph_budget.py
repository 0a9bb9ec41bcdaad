"""The generic graph engine never hangs and never crashes without a clear message."""
import time

import pytest
import torch

from msmodelslim.errors import ModelslimError
from msmodelslim.pytorch.prune.graph import GraphTraceError
from msmodelslim.pytorch.prune.prune_torch import CallParams, PruneTorch
from zoo import hf


class SlowToTrace(torch.nn.Module):
    """A model whose forward takes a minute while gradients are recorded, as when its graph is traced."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):
        if torch.is_grad_enabled():
            time.sleep(60)
        return self.fc(x)


def test_a_graph_that_never_finishes_is_stopped_within_the_budget():
    start = time.monotonic()
    pruner = PruneTorch(SlowToTrace(), torch.randn(2, 4), engine="torch-pruning", trace_timeout=5)
    with pytest.raises(GraphTraceError) as info:
        pruner.analysis(0.7)
    assert time.monotonic() - start < 30
    text = str(info.value)
    assert "did not finish within 5 s" in text and "trace_timeout" in text
    assert isinstance(info.value, ModelslimError)


class NumpyInForward(torch.nn.Module):
    """A forward that leaves torch for numpy: it runs under no_grad but fails while gradients are recorded."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(4, 32), torch.nn.Linear(32, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(h * torch.from_numpy(h.mean(0).numpy() > 0))


def test_a_graph_that_crashes_is_reported():
    model, x = NumpyInForward(), torch.randn(2, 4)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(GraphTraceError, match="could not be built") as info:
        PruneTorch(model, x, engine="torch-pruning").prune(0.7)
    assert "numpy" in str(info.value)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_gpt2_whose_concatenation_torch_pruning_cannot_map_still_traces():
    """torch-pruning 1.6.1 raises on GPT-2's concatenation index map; that operation's groups are protected now,
    not the graph lost."""
    model, batch = hf.gpt2()
    PruneTorch(model, CallParams(**batch), engine="torch-pruning", trace_timeout=60).analysis(0.7)


def test_llama_traces_in_time_now_that_split_parts_stay_inside_their_part():
    """torch-pruning 1.6.1 alone loops forever grouping Llama: an index mapped back from a split part grows around
    a cycle of the graph. With the corrections of graph_axes.py the graph finishes."""
    model, batch = hf.llama()
    start = time.monotonic()
    PruneTorch(model, CallParams(**batch), engine="torch-pruning", trace_timeout=30).analysis(0.7)
    assert time.monotonic() - start < 30


def test_the_same_models_prune_with_structure_rules():
    for factory in (hf.llama, hf.gpt2):
        model, batch = factory()
        before = sum(p.numel() for p in model.parameters())
        desc = PruneTorch(model, CallParams(**batch)).prune(0.7)
        assert desc["__meta__"]["engine"].startswith("structure:")
        assert sum(p.numel() for p in model.parameters()) < before


def test_structure_engine_refuses_unknown_models():
    with pytest.raises(ValueError, match="engine='structure'"):
        PruneTorch(torch.nn.Linear(4, 4), torch.randn(1, 4), engine="structure").analysis(0.7)
