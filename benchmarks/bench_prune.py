"""Structured pruning benchmark: coverage of the test zoo against plain torch-pruning, planning time, CPU latency
of pruned models next to their MACs, and what the importance criteria keep on trained networks.

Writes benchmarks/results/prune.md. Run: python benchmarks/bench_prune.py [--quick]
"""
import argparse
import copy
import json
import statistics
import subprocess
import sys

import torch

from common import ROOT, RUNS, interleaved, spread, timed_runs, write_result
from msmodelslim import set_logger_level
from msmodelslim.pytorch.prune.measure import profile
from msmodelslim.pytorch.prune.prune_torch import PruneTorch
from msmodelslim.utils.report import format_table
from zoo import cnn
from zoo.registry import UN_PRUNE, ZOO, logits

BASELINE = ROOT / "benchmarks" / "_torch_pruning_baseline.py"
BASELINE_TIMEOUT_S = 120


def count(model):
    return sum(p.numel() for p in model.parameters())


def ours(name, ratio):
    build = ZOO[name]
    before = count(build()[0])
    (model, inputs), (pruner, desc), seconds = timed_runs(
        build, lambda built: _prune(*built, ratio, UN_PRUNE.get(name)))
    kept = count(model) / before
    out = logits(model, inputs)
    fresh, _ = build()
    PruneTorch(fresh, inputs).prune_by_desc(json.loads(json.dumps(desc)))
    fresh.load_state_dict(model.state_dict())
    replayed = torch.equal(logits(fresh, inputs), out)
    return {"kept": kept, "replayed": replayed, "seconds": seconds, "engine": desc["__meta__"]["engine"]}


def _prune(model, inputs, ratio, un_prune):
    pruner = PruneTorch(model, inputs)
    return pruner, pruner.prune(ratio, un_prune)


def baseline(name, ratio):
    try:
        proc = subprocess.run([sys.executable, str(BASELINE), name, str(ratio)], capture_output=True, text=True,
                              timeout=BASELINE_TIMEOUT_S, cwd=BASELINE.parent)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {BASELINE_TIMEOUT_S} s (hangs)"}
    except (IndexError, ValueError):
        return {"error": "crashed without output"}


def success(result, ratio):
    return "error" not in result and abs(result["kept"] - ratio) <= 0.02 and result["replayed"]


def coverage_section(names, ratio=0.5):
    rows, ours_ok, base_ok = [], 0, 0
    for name in names:
        mine = ours(name, ratio)
        theirs = baseline(name, ratio)
        ours_ok += success(mine, ratio)
        base_ok += success(theirs, ratio)
        theirs_text = theirs["error"] if "error" in theirs else (
            f"kept {theirs['kept']:.1%}, replay {'ok' if theirs['replayed'] else 'differs'}")
        rows.append([name, mine["engine"], f"{mine['kept']:.1%}", "ok" if mine["replayed"] else "differs",
                     spread(mine["seconds"]), "yes" if success(theirs, ratio) else "no", theirs_text])
        print(rows[-1], flush=True)
    table = format_table(["model", "engine", "kept params", "replay", "analysis+prune s",
                          "torch-pruning ok", "torch-pruning result"], rows)
    summary = (f"**Coverage at {ratio:.0%} of the parameters** (pruned to the budget within 2 points and replayed "
               f"exactly on a fresh model): msmodelslim {ours_ok}/{len(names)}, "
               f"plain torch-pruning BasePruner {base_ok}/{len(names)}.")
    return (summary + "\n\n" + table + f"\n\n'analysis+prune s': median (min-max) of {RUNS} runs of "
            f"`PruneTorch(model, inputs).prune({ratio})`, each on a freshly built model.")


def latency_section(quick):
    set_logger_level("warning")
    from msmodelslim import assets

    cases = [("EfficientNet-Lite0 (ImageNet weights)", assets.efficientnet_lite0, ["l1", "activation"]),
             ("ResNet-50", lambda: cnn.resnet50(1000).eval(), ["l1"]),
             ("VGG-16", lambda: cnn.VGG16(1000).eval(), ["l1"])]
    if quick:  # a smoke run: one model, one criterion
        cases = [("EfficientNet-Lite0 (ImageNet weights)", assets.efficientnet_lite0, ["l1"])]
    rows = []
    batch = 1 if quick else 8
    for label, build, criteria in cases:
        for criterion in criteria:
            dense = build()
            x = torch.randn(batch, 3, 224, 224)
            sample = assets.sample_images()[:1] if "Efficient" in label else x[:1]
            pruned = copy.deepcopy(dense)
            PruneTorch(pruned, sample).set_importance_evaluation_function(criterion).prune(0.5)
            with torch.inference_mode():
                t_dense, t_pruned = interleaved([lambda: dense(x), lambda: pruned(x)], warmup=0 if quick else 2,
                                                repeat=1 if quick else 10)
            macs_dense = sum(profile(dense, lambda m: m(x[:1]))[2].values())
            macs_pruned = sum(profile(pruned, lambda m: m(x[:1]))[2].values())
            ratio = statistics.median(t_pruned) / statistics.median(t_dense)
            rows.append([label, criterion, f"{count(pruned) / count(dense):.1%}", f"{macs_pruned / macs_dense:.1%}",
                         spread([t * 1000 for t in t_dense], "{:.1f}"), spread([t * 1000 for t in t_pruned], "{:.1f}"),
                         f"{ratio:.2f}"])
            print(rows[-1], flush=True)
    table = format_table(["model", "importance", "params kept", "MACs kept", f"dense ms (batch {batch})",
                          "pruned ms", "latency ratio"], rows)
    return table + ("\n\nTimes: median (min-max) of 10 forward passes of each model, the dense and the pruned one "
                    "run alternately after 2 warm-up rounds; latency ratio: pruned median over dense median.")


def _embedding(model, batch):
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def _budget_cases(quick):
    """``(label, build(), sample call, evaluation inputs, agreement(dense, pruned))`` of the budget section."""
    from msmodelslim import assets
    from msmodelslim.pytorch.utils.calibration import CallParams

    photos = assets.sample_images(crops_per_image=1 if quick else 8)

    def top1(dense, pruned):
        with torch.no_grad():
            return f"top-1 agreement {(pruned(photos).argmax(1) == dense(photos).argmax(1)).float().mean().item():.3f}"

    model, tokenizer = assets.minilm_l6()
    docs, _, _ = assets.bbc_news()
    batch = dict(tokenizer(docs[: 8 if quick else 32], padding=True, truncation=True, max_length=128,
                           return_tensors="pt"))
    sample = CallParams(**{k: v[:4] for k, v in batch.items()})

    def cosine(dense, pruned):
        return f"embedding cosine {(_embedding(dense, batch) * _embedding(pruned, batch)).sum(-1).mean().item():.3f}"

    defaults = {}
    # a depthwise-heavy network: at the default node_reserved_ratio (0.5: a layer keeps at least half its channels)
    # a 50 % latency budget stops at 31 % of the MACs and 0.60 of the time, so layers may lose up to three quarters
    depthwise = {"node_reserved_ratio_latency": 0.75}
    # a transformer: every layer's heads and FFN neurons may shrink (the default un_prune_list [0, -1] would keep
    # the first layer's heads, and with uniform layers every layer's); the hidden size stays, so that the sentence
    # embeddings can be compared with the dense model's
    encoder = {"un_prune_list": [], "node_reserved_ratio": 0.75, "prune_hidden": False}
    cases = [("EfficientNet-Lite0 (ImageNet weights)", assets.efficientnet_lite0, photos[:2], top1, depthwise),
             ("all-MiniLM-L6 (sentence embeddings)", lambda: assets.minilm_l6()[0], sample, cosine, encoder)]
    if quick:
        cases = cases[1:]
    else:
        cases.insert(1, ("ResNet-50 (random weights)", lambda: cnn.resnet50(1000).eval(), photos[:1],
                         lambda dense, pruned: "-", defaults))
    return cases


def budget_section(quick):
    """Each model pruned to 50 % of its MACs and to 50 % of its measured latency, l1 and activation importance.
    Latency ratios are measured interleaved with the dense model (A, B, A, B ...), fastest run of each."""
    from msmodelslim.pytorch.prune.budgets import latency_ratio
    from msmodelslim.pytorch.utils.calibration import as_call_params

    set_logger_level("warning")
    rows = []
    for label, build, sample, agreement, options in _budget_cases(quick):
        call = as_call_params(sample)
        for budget in ("macs",) if quick else ("macs", "latency"):
            for criterion in ("l1",) if quick else ("l1", "activation"):
                dense = build()
                pruned = copy.deepcopy(dense)
                pruner = PruneTorch(pruned, call, prune_hidden=options.get("prune_hidden", True))
                pruner.set_importance_evaluation_function(criterion)
                reserved = options.get(f"node_reserved_ratio_{budget}", options.get("node_reserved_ratio"))
                if reserved is not None:
                    pruner.set_node_reserved_ratio(reserved)
                pruner.prune(0.5, options.get("un_prune_list"), budget=budget)
                ratios = [latency_ratio(pruned, dense, call) for _ in range(1 if quick else 3)]
                macs = sum(profile(pruned, call)[2].values()) / sum(profile(dense, call)[2].values())
                rows.append([label, f"50 % of {budget}", criterion, f"{count(pruned) / count(dense):.1%}",
                             f"{macs:.1%}", spread(ratios), agreement(dense, pruned)])
                print(rows[-1], flush=True)
    return format_table(["model", "budget", "importance", "params kept", "MACs kept", "latency ratio (CPU)",
                         "agreement with the dense model"], rows) + (
        "\n\nLatency ratio: pruned over dense time of one forward pass on the sample input (batch 1 for the images, "
        "4 sentences of <= 128 tokens for MiniLM), the two models run alternately and the fastest run of each "
        "compared; the median (min-max) of 3 such measurements. Goal at a 50 % latency budget: <= 0.55. MiniLM is pruned "
        "with un_prune_list=[], node_reserved_ratio 0.75 and prune_hidden=False (heads and FFN neurons of every "
        "layer); EfficientNet-Lite0 at its latency budget with node_reserved_ratio 0.75 (a layer may lose up to "
        "three quarters of its channels; at the default 0.5 it stops at 31 % of its MACs and 0.60 of the time); "
        "agreement is measured before any fine-tuning.")


def criteria_section(quick):
    from msmodelslim import assets
    from zoo.digits import DigitsNet, accuracy, load, train

    images, labels, train_idx, test_idx = load()
    torch.manual_seed(0)
    dense = DigitsNet()
    train(dense, images, labels, train_idx, epochs=1 if quick else 10)
    rows = [["digits CNN", "dense", "100%", f"{accuracy(dense, images, labels, test_idx):.3f}", ""]]
    sample = images[train_idx[:64]]
    loss = torch.nn.CrossEntropyLoss()
    for criterion in ("l1", "random") if quick else ("l1", "l2", "bn_scale", "taylor", "activation", "random"):
        model = copy.deepcopy(dense)
        pruner = PruneTorch(model, sample)
        if criterion == "taylor":
            pruner.set_importance_evaluation_function("taylor", loss_fn=lambda out: loss(out, labels[train_idx[:64]]))
        else:
            pruner.set_importance_evaluation_function(criterion)
        pruner.prune(0.5)
        before = accuracy(model, images, labels, test_idx)
        train(model, images, labels, train_idx, epochs=1 if quick else 2)
        rows.append(["digits CNN", criterion, f"{count(model) / count(dense):.1%}", f"{before:.3f}",
                     f"{accuracy(model, images, labels, test_idx):.3f}"])
    photos = assets.sample_images(crops_per_image=1 if quick else 8)
    reference = assets.efficientnet_lite0()(photos).argmax(1)
    for criterion in ("l1",) if quick else ("l1", "activation", "random"):
        model = assets.efficientnet_lite0()
        PruneTorch(model, photos[:2]).set_importance_evaluation_function(criterion).prune(0.8)
        with torch.no_grad():
            agree = (model(photos).argmax(1) == reference).float().mean().item()
        rows.append(["EfficientNet-Lite0", criterion, f"{count(model) / 4652008:.1%}", f"{agree:.3f}", "-"])
    return format_table(["model", "importance", "params kept", "accuracy / top-1 agreement before fine-tuning",
                         "after 2 epochs"], rows) + (
        "\n\nDigits: test accuracy on 397 held-out digits. EfficientNet-Lite0: top-1 agreement with the dense model on "
        "16 crops of the two photographs scikit-learn ships (no ImageNet validation data is installable here).")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: one model or criterion per section")
    parser.add_argument("--results", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    set_logger_level("warning")
    names = ["resnet18"] if args.quick else list(ZOO)
    sections = [
        ("Coverage and planning time on the test zoo", coverage_section(names)),
        ("CPU latency at 50 % of the parameters", latency_section(args.quick)),
        ("Budgets in MACs and in measured latency", budget_section(args.quick)),
        ("Importance criteria on trained networks", criteria_section(args.quick)),
    ]
    write_result("prune", "Structured pruning (PruneTorch)", sections, args.results)


if __name__ == "__main__":
    main()
