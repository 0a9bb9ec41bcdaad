"""The dependency graph is traced in a forked child on CPU; where fork is unavailable (or the model is on a GPU) a
background thread does it. The thread path must give the same pruning."""
import copy
import json

import torch

from msmodelslim.pytorch.prune import graph
from msmodelslim.pytorch.prune.prune_torch import PruneTorch
from zoo import cnn


def test_the_threaded_trace_prunes_as_the_forked_one(monkeypatch):
    torch.manual_seed(0)
    model = cnn.small_resnet().eval()
    x = torch.randn(1, 3, 32, 32)
    forked_model = copy.deepcopy(model)
    forked = PruneTorch(forked_model, x).prune(0.5)
    threaded_calls = []
    run_threaded = graph._run_threaded

    def counted(*args):
        threaded_calls.append(1)
        return run_threaded(*args)

    monkeypatch.setattr(graph.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    monkeypatch.setattr(graph, "_run_threaded", counted)
    threaded_model = copy.deepcopy(model)
    threaded = PruneTorch(threaded_model, x).prune(0.5)
    assert threaded_calls, "the thread path did not run"
    assert json.dumps(threaded, sort_keys=True) == json.dumps(forked, sort_keys=True)
    with torch.no_grad():
        assert torch.equal(threaded_model(x), forked_model(x))
