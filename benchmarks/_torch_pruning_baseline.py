"""One model of the test zoo pruned with plain torch-pruning (BasePruner, L1 group magnitude), as a user of that
library would: a channel ratio found by bisection to land at the parameter budget, the classifier ignored, then a
replay of ``pruning_history()`` on a fresh model. Prints one JSON line. Run by bench_prune.py in a subprocess
(it may hang)."""
import copy
import json
import sys
import warnings

import torch

import common  # noqa: F401  (sets up paths)
from zoo.registry import ZOO, logits

warnings.filterwarnings("ignore")


def run(name, target):
    import torch_pruning as tp

    build = ZOO[name]
    model, inputs = build()
    total = sum(p.numel() for p in model.parameters())
    example = inputs.kwargs if hasattr(inputs, "kwargs") else inputs
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]

    def prune_at(ratio):
        pruned = copy.deepcopy(model)
        pruner = tp.pruner.BasePruner(
            pruned, example, importance=tp.importance.GroupMagnitudeImportance(p=1), pruning_ratio=ratio,
            ignored_layers=[dict(pruned.named_modules())[n] for n, m in model.named_modules() if m in head],
            output_transform=(lambda out: out.logits) if not isinstance(example, torch.Tensor) else None)
        pruner.step()
        return pruned, pruner

    low, high, best = 0.0, 0.9, None
    for _ in range(8):
        ratio = (low + high) / 2
        pruned, pruner = prune_at(ratio)
        kept = sum(p.numel() for p in pruned.parameters()) / total
        if best is None or abs(kept - target) < abs(best[2] - target):
            best = (pruned, pruner, kept)
        if kept > target:
            low = ratio
        else:
            high = ratio
    pruned, pruner, kept = best
    out = logits(pruned, inputs)
    fresh, _ = build()
    graph = tp.DependencyGraph().build_dependency(
        fresh, example, output_transform=(lambda o: o.logits) if not isinstance(example, torch.Tensor) else None)
    graph.load_pruning_history(pruner.pruning_history())
    fresh.load_state_dict(pruned.state_dict())
    replayed = torch.allclose(logits(fresh, inputs), out, atol=1e-5)
    return {"kept": kept, "replayed": bool(replayed)}


if __name__ == "__main__":
    name, target = sys.argv[1], float(sys.argv[2])
    try:
        result = run(name, target)
    except Exception as exc:  # reported as a failure of the baseline
        result = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
    print(json.dumps(result))
