"""Graph-fuzz benchmark of structured pruning (issue 13): N generated plain-torch models (tests/zoo/graph_fuzz.py,
``build(seed)`` for seeds 0..N-1) pruned by PruneTorch and by plain torch-pruning, side by side.

PruneTorch: each model is pruned to its drawn budget (50-80 % of the parameters, its drawn ``align``, the output
layers in ``un_prune_list``) and sorted into *pruned* (within 2 points of the budget, output shapes kept, the desc
replays on a fresh copy to the same shapes and equal outputs), *short* (above the budget with a logged reason),
*refused* (a documented error, the model unchanged), *crashed* (an undocumented exception, or no answer within the
time limit) or *broken* (no exception, but a documented promise not kept: an overshoot below the budget, a
replay that differs, changed output shapes, a model changed by a refusal, or - for the models without attention -
outputs other than the dense model's with the removed channels' inputs zeroed, in float64 with LayerNorm/GroupNorm
reduced to their per-channel affine part: channels paired with the wrong inputs run, with the wrong weights).
Goals: pruned >= 90 %, crashed and broken 0. torch-pruning is not held to that last check.

torch-pruning: ``tp.pruner.BasePruner`` with ``GroupMagnitudeImportance(p=1)``, the same output layers ignored,
``round_to`` the same alignment, and a channel ratio found by bisection to land at the parameter budget (as
benchmarks/_torch_pruning_baseline.py does), then ``pruning_history()`` replayed on a fresh copy.

Every run is a forked child with a time limit (torch-pruning may hang). Writes benchmarks/results/prune_fuzz.md.
Run: python benchmarks/bench_prune_fuzz.py [--n 1000] [--quick] [--results DIR] [--raw FILE.jsonl]
"""
import argparse
import collections
import copy
import datetime
import json
import multiprocessing
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
import warnings

import torch

import common
from common import ROOT
from msmodelslim.utils.report import format_table
from zoo import graph_fuzz

OURS_TIMEOUT_S = 180  # one model through PruneTorch (its own trace budget is TRACE_TIMEOUT_S)
TP_TIMEOUT_S = 90  # one model through the torch-pruning bisection
TRACE_TIMEOUT_S = 30.0
BISECTION_STEPS = 8
GOAL_PRUNED = 0.90

OURS_CATEGORIES = ("pruned", "short", "refused", "crashed", "broken")
TP_CATEGORIES = ("pruned", "short", "overshoot", "broken", "crashed", "hang")


# ------------------------------------------------------------------------------------------ running in a child
def in_child(fn, seed, timeout_s):
    """``fn(seed)`` in a forked child, or ``{"timeout": True}`` after ``timeout_s`` seconds."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def child():
        try:
            torch.set_num_threads(1)
            warnings.simplefilter("ignore")
            result = fn(seed)
        except BaseException as exc:  # reported to the parent as a crash of the harness
            result = {"harness_error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        send.send(result)
        send.close()
        os._exit(0)

    process = ctx.Process(target=child, daemon=False)  # PruneTorch forks its own tracing child
    start = time.perf_counter()
    process.start()
    send.close()
    try:
        if receive.poll(timeout_s):
            try:
                result = receive.recv()
            except EOFError:
                result = {"harness_error": "the child died without an answer (signal or os._exit)"}
        else:
            result = {"timeout": True}
    finally:
        if process.is_alive():
            process.kill()
        process.join(5)
        receive.close()
    result["seconds"] = time.perf_counter() - start
    return result


# ------------------------------------------------------------------------------------------ PruneTorch
def ours(seed):
    from msmodelslim import set_logger_level

    set_logger_level("error")
    case = graph_fuzz.build(seed)
    start = time.perf_counter()
    result = graph_fuzz.attempt(case, trace_timeout=TRACE_TIMEOUT_S)
    result["prune_seconds"] = time.perf_counter() - start
    return result


def ours_category(result):
    if result.get("timeout"):
        return "crashed"
    if "harness_error" in result:
        return "crashed"
    if result["category"] != graph_fuzz.CRASHED:
        return result["category"]
    return "crashed" if result.get("raised") else "broken"


# ------------------------------------------------------------------------------------------ torch-pruning
def execution_order(model, inputs):
    """Conv/Linear modules in the order they run."""
    order, handles = [], []
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            handles.append(module.register_forward_hook(lambda m, i, o: order.append(m) if m not in order else None))
    try:
        graph_fuzz.call(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return order


def torch_pruning(seed):
    import torch_pruning as tp

    case = graph_fuzz.build(seed)
    model, inputs = case.model, case.inputs
    total = graph_fuzz.count(model)
    reference = [t.shape for t in graph_fuzz.output_tensors(case.run())]

    def forward(m, example):
        return graph_fuzz.output_tensors(graph_fuzz.call(m, example))

    def ignored(copy_of):
        modules = dict(copy_of.named_modules())
        names = list(case.heads)
        if case.keep_first:  # mirror un_prune_list [0, -1]: the first and last Conv/Linear in execution order
            order = execution_order(model, inputs)
            names += [n for n, m in model.named_modules() if order and m in (order[0], order[-1])]
        return [modules[n] for n in names]

    def prune_at(ratio):
        pruned = copy.deepcopy(model)
        pruner = tp.pruner.BasePruner(
            pruned, inputs, importance=tp.importance.GroupMagnitudeImportance(p=1), pruning_ratio=ratio,
            ignored_layers=ignored(pruned), round_to=case.align if case.align > 1 else None, forward_fn=forward)
        pruner.step()
        return pruned, pruner

    start = time.perf_counter()
    try:
        low, high, best = 0.0, 0.9, None
        for _ in range(BISECTION_STEPS):
            ratio = (low + high) / 2
            pruned, pruner = prune_at(ratio)
            kept = graph_fuzz.count(pruned) / total
            if best is None or abs(kept - case.ratio) < abs(best[2] - case.ratio):
                best = (pruned, pruner, kept)
            if kept > case.ratio:
                low = ratio
            else:
                high = ratio
    except Exception as exc:  # torch-pruning failed on this model
        return {"category": "crashed", "error": graph_fuzz.error_info(exc)}
    pruned, pruner, kept = best
    result = {"kept": kept, "prune_seconds": time.perf_counter() - start}
    try:
        out = graph_fuzz.output_tensors(case.run(pruned))
    except Exception as exc:  # the pruned model does not run
        return {**result, "category": "broken", "problem": "the pruned model does not run",
                "error": graph_fuzz.error_info(exc)}
    if [t.shape for t in out] != reference:
        return {**result, "category": "broken", "problem": "output shapes changed"}
    try:
        fresh = copy.deepcopy(model)
        graph = tp.DependencyGraph().build_dependency(fresh, inputs, forward_fn=forward)
        graph.load_pruning_history(pruner.pruning_history())
        fresh.load_state_dict(pruned.state_dict())
        replayed = all(torch.allclose(a, b, atol=1e-5)
                       for a, b in zip(graph_fuzz.output_tensors(case.run(fresh)), out))
    except Exception as exc:  # the replay failed
        return {**result, "category": "broken", "problem": "replaying pruning_history() failed",
                "error": graph_fuzz.error_info(exc)}
    if not replayed:
        return {**result, "category": "broken", "problem": "the replayed model computes other outputs"}
    if abs(kept - case.ratio) <= graph_fuzz.TOLERANCE:
        return {**result, "category": "pruned"}
    return {**result, "category": "short" if kept > case.ratio else "overshoot"}


def tp_category(result):
    if result.get("timeout"):
        return "hang"
    if "harness_error" in result:
        return "crashed"
    return result["category"]


# ------------------------------------------------------------------------------------------ report
def provenance(load_before, load_after, n):
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    import torch_pruning as tp
    from importlib.metadata import PackageNotFoundError, version

    def dist(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    dirty = [line for line in git("status", "--porcelain", "--", "msmodelslim").splitlines() if line.strip()]
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or cpu
    fmt = lambda load: " / ".join(f"{x:.2f}" for x in load)  # noqa: E731
    return (f"Commit {git('rev-parse', '--short', 'HEAD')}"
            + (f" with {len(dirty)} uncommitted change(s) under msmodelslim/" if dirty else "")
            + f"; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu}, {os.cpu_count()} cores; "
            f"msmodelslim {dist('msmodelslim')}, torch {torch.__version__}, torch-pruning {dist('torch-pruning')} "
            f"(its __version__ says {tp.__version__}), hypothesis {dist('hypothesis')}, "
            f"Python {platform.python_version()}; seeds 0..{n - 1}; "
            f"each run in a forked child with one thread; load average (1/5/15 min) before {fmt(load_before)}, "
            f"after {fmt(load_after)}.")


def share(count, n):
    return f"{count} ({count / max(n, 1):.1%})"


def normalise(text):
    return re.sub(r"\d+", "N", text or "")


def _cell(text, width=150):
    text = (text or "").replace("|", "/").replace("\n", " ")
    return text if len(text) <= width else text[:width - 3] + "..."


def summary_section(rows, n):
    ours_counts = collections.Counter(r["ours_category"] for r in rows)
    tp_counts = collections.Counter(r["tp_category"] for r in rows)
    table = format_table(
        ["tool", "pruned to the budget", "short (reason logged)", "refused (documented error)", "overshoot",
         "crashed / hang", "broken"],
        [["msmodelslim PruneTorch", share(ours_counts["pruned"], n), share(ours_counts["short"], n),
          share(ours_counts["refused"], n), "(in broken)", share(ours_counts["crashed"], n),
          share(ours_counts["broken"], n)],
         ["torch-pruning BasePruner", share(tp_counts["pruned"], n), share(tp_counts["short"], n), "-",
          share(tp_counts["overshoot"], n), share(tp_counts["crashed"] + tp_counts["hang"], n)
          + (f", {tp_counts['hang']} hang" if tp_counts["hang"] else ""), share(tp_counts["broken"], n)]])
    ok = ours_counts["pruned"] / max(n, 1) >= GOAL_PRUNED and ours_counts["crashed"] == ours_counts["broken"] == 0
    times = [r["ours"].get("prune_seconds") for r in rows if r["ours"].get("prune_seconds") is not None]
    tp_times = [r["tp"].get("prune_seconds") for r in rows if r["tp"].get("prune_seconds") is not None]
    text = (f"**{n} generated models**: PruneTorch pruned {share(ours_counts['pruned'], n)} to the budget (goal >= "
            f"{GOAL_PRUNED:.0%}), crashed on {ours_counts['crashed']} and broke a promise on {ours_counts['broken']} "
            f"(goal 0 each): goals {'met' if ok else 'not met'}. Plain torch-pruning landed "
            f"{share(tp_counts['pruned'], n)} at the budget with a working, replayable model.")
    limited = sum(1 for r in rows if r["ours_category"] == "short" and not _short_reasons(r))
    if limited:
        feasible = n - limited
        text += (f" {limited} of the short models stopped at the limit of their drawn settings (no group protected "
                 f"by the tool: the un_prune_list, align and node_reserved_ratio drawn for them allow no more); of "
                 f"the other {feasible}, PruneTorch pruned {share(ours_counts['pruned'], feasible)}.")
    text += "\n\n" + table
    if times:
        text += (f"\n\nMedian seconds per model: PruneTorch (analysis + prune + checks) "
                 f"{statistics.median(times):.2f}"
                 + (f", torch-pruning ({BISECTION_STEPS}-step bisection) {statistics.median(tp_times):.2f}"
                    if tp_times else "") + ".")
    return text


def ours_failures_section(rows):
    groups = collections.defaultdict(list)
    for r in rows:
        if r["ours_category"] not in ("crashed", "broken"):
            continue
        res = r["ours"]
        error = res.get("error") or {}
        if res.get("timeout"):
            key = ("crashed", f"no answer within {OURS_TIMEOUT_S} s", "-", "-", "-")
        elif "harness_error" in res:
            key = ("crashed", "harness error", "-", normalise(res["harness_error"])[:120], "-")
        else:
            key = (r["ours_category"], normalise(res.get("problem"))[:100], error.get("type", "-"),
                   normalise(error.get("message", "-"))[:160], error.get("frame", "-"))
        groups[key].append(r)
    if not groups:
        return "No crash and no broken promise."
    table = [[len(v), k[0], _cell(k[1], 70), k[2], _cell(k[3]), k[4], min(x["seed"] for x in v),
              min(v, key=lambda x: (x["steps"], x["seed"]))["seed"]]
             for k, v in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
    return format_table(["models", "category", "problem", "exception", "message (digits as N)",
                         "last msmodelslim frame", "first seed", "seed of the smallest model"], table) + (
        "\n\nReproduce one: `import sys; sys.path.insert(0, 'tests'); from zoo.graph_fuzz import build, attempt; "
        "case = build(SEED); print(case); print(attempt(case))`.")


def refusals_section(rows):
    groups = collections.defaultdict(list)
    for r in rows:
        if r["ours_category"] == "refused":
            error = r["ours"]["error"]
            groups[(error["type"], normalise(error["message"])[:170], error["frame"])].append(r)
    if not groups:
        return "No refusal."
    table = [[len(v), k[0], _cell(k[1], 170), k[2], min(x["seed"] for x in v)]
             for k, v in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
    return format_table(["models", "exception", "message (digits as N)", "raised at", "first seed"], table)


def _short_reasons(row):
    """The protections the tool logged in one model (normalised), recovery included."""
    notes = row["ours"].get("notes", [])
    found = {normalise(n.split(" - ", 1)[1])[:110] for n in notes
             if n.startswith("Protected from pruning") and " - " in n}
    found |= {"a group broke the model and was protected (recovery)" for n in notes if n.startswith("Pruning group")}
    return found


def short_section(rows):
    reasons = collections.Counter()
    short = [r for r in rows if r["ours_category"] == "short"]
    for r in short:
        reasons.update(_short_reasons(r) or {"nothing protected: alignment / node_reserved_ratio limits"})
    if not short:
        return "No model stopped short."
    rows_out = [[count, _cell(reason, 120)] for reason, count in reasons.most_common(12)]
    return (f"{len(short)} models stopped above the budget with a logged reason; the protections logged in them "
            f"(a model may have several):\n\n" + format_table(["models", "protection reason (digits as N)"], rows_out))


def tp_failures_section(rows):
    groups = collections.defaultdict(list)
    for r in rows:
        category = r["tp_category"]
        if category in ("pruned", "short", "overshoot"):
            continue
        res = r["tp"]
        error = res.get("error") or {}
        message = ("no answer within %d s" % TP_TIMEOUT_S if category == "hang" else
                   res.get("harness_error") or f"{error.get('type', '')}: {error.get('message', '')}".strip(": "))
        groups[(category, _cell(res.get("problem") or "-", 60), normalise(message)[:150])].append(r)
    if not groups:
        return "torch-pruning crashed, hung or broke no model."
    table = [[len(v), *k, min(x["seed"] for x in v)] for k, v in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
    return format_table(["models", "category", "problem", "error (digits as N)", "first seed"], table[:15])


# ------------------------------------------------------------------------------------------ main
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="number of generated models (seeds 0..n-1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5 models")
    parser.add_argument("--results", type=pathlib.Path, default=None, help="folder of prune_fuzz.md")
    parser.add_argument("--raw", type=pathlib.Path, default=None, help="also write one JSON line per model here")
    parser.add_argument("--no-baseline", action="store_true", help="skip torch-pruning")
    args = parser.parse_args()
    n = 5 if args.quick else args.n
    if args.results is not None:
        common.RESULTS = args.results
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows = []
    raw = open(args.raw, "w") if args.raw else None
    try:
        for seed in range(n):
            case = graph_fuzz.build(seed)
            mine = in_child(ours, seed, OURS_TIMEOUT_S)
            theirs = {"category": "skipped"} if args.no_baseline else in_child(torch_pruning, seed, TP_TIMEOUT_S)
            row = {"seed": seed, "steps": len(case.model.steps), "params": graph_fuzz.count(case.model),
                   "ratio": case.ratio, "ours": mine, "tp": theirs, "ours_category": ours_category(mine),
                   "tp_category": tp_category(theirs)}
            rows.append(row)
            if raw:
                raw.write(json.dumps(row) + "\n")
                raw.flush()
            print(f"seed {seed}: msmodelslim {row['ours_category']} (kept {mine.get('kept', 1):.1%} of "
                  f"{case.ratio:.0%}), torch-pruning {row['tp_category']} "
                  f"({mine['seconds']:.1f} s / {theirs.get('seconds', 0):.1f} s)", flush=True)
    finally:
        if raw:
            raw.close()
    load_after = os.getloadavg()
    sections = [
        ("Provenance", provenance(load_before, load_after, n)),
        ("Outcomes", summary_section(rows, n)),
        ("msmodelslim crashes and broken promises", ours_failures_section(rows)),
        ("msmodelslim refusals", refusals_section(rows)),
        ("Why models stopped short", short_section(rows)),
        ("torch-pruning failures", tp_failures_section(rows)),
    ]
    common.write_result("prune_fuzz", "Graph fuzz: PruneTorch on generated plain-torch models", sections)


if __name__ == "__main__":
    sys.exit(main())
