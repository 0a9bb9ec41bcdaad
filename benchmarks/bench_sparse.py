"""Sparse tool benchmark on SmolLM2-135M: perplexity, wall time and peak memory of every method at 50 %
unstructured, 2:4 and non-uniform (OWL), the compact export size, and llm-compressor side by side when available.

Protocol (README, "Perplexity protocol"): 32 calibration sequences x 512 tokens from the Wikipedia train split,
perplexity on 16 x 512 tokens of the test split. Each run is a separate process (clean peak RSS).

Writes benchmarks/results/sparse.md. Run: python benchmarks/bench_sparse.py [--quick] [--part methods|compare]
Set LLMCOMPRESSOR_PYTHON to the python of a venv with llmcompressor (e.g. `pip install torch==2.13.0
llmcompressor==0.14.0.1`) to measure its SparseGPT and Wanda beside ours ("compare").
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import ROOT, merge_result, provenance, spread
from msmodelslim.utils.report import format_table

METHODS = ("weight_magnitude", "magnitude", "hessian", "par", "par_v2")
SETTINGS = (("50% unstructured", {}), ("2:4", {"pattern": "2:4"}), ("50% OWL (uniform=False)", {"uniform": False}))


# The layers whose masks are compared side by side: one that sees the same inputs in both tools (the first block's),
# and one after fifteen blocks of each tool's own sparsified outputs.
MASK_LAYERS = ("model.layers.0.self_attn.q_proj", "model.layers.15.mlp.down_proj")
# timed jobs run this many times, alternately, for a median (min-max)
COMPARE_ROUNDS = STREAM_ROUNDS = METHODS_ROUNDS = 2


def worker(method, options, samples, seq_len, eval_chunks, export_dir, mask_file=""):
    import resource

    import torch
    import transformers as T

    from msmodelslim import assets, set_logger_level
    from msmodelslim.pytorch.sparse.sparse_tools import Compressor, SparseConfig
    from msmodelslim.utils.checkpoint import save_state_dict
    from msmodelslim.pytorch.utils.evaluation import perplexity

    set_logger_level("warning")
    path = assets.smollm2_135m_dir()
    tokenizer = T.AutoTokenizer.from_pretrained(path)
    calibration = [{"input_ids": c} for c in assets.wiki_token_chunks(tokenizer, "train", samples, seq_len).split(4)]
    evaluation = assets.wiki_token_chunks(tokenizer, "test", eval_chunks, seq_len)
    if os.environ.get("MSMODELSLIM_BENCH_TINY"):  # --quick: SmolLM2's tokenizer and shape family, 2 tiny blocks
        config = T.AutoConfig.from_pretrained(path)
        config.num_hidden_layers, config.hidden_size, config.intermediate_size = 2, 64, 128
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = 4, 2, 16
        torch.manual_seed(0)
        model = T.LlamaForCausalLM(config).eval()
    else:
        model = T.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    result = {}
    if method == "dense":
        result["ppl"] = perplexity(model, evaluation)
        if export_dir:
            dense_file = os.path.join(export_dir, "dense.safetensors")
            save_state_dict(model.state_dict(), dense_file)
            result["dense_bytes"] = os.path.getsize(dense_file)
    else:
        compressor = Compressor(model, SparseConfig(method=method, **options))
        start = time.perf_counter()
        compressor.compress(calibration)
        result["seconds"] = time.perf_counter() - start
        result["timings"] = compressor.report().timings
        result["ppl"] = perplexity(model, evaluation)
        result["sparsity"] = compressor.report().overall_sparsity
        if export_dir:
            compact = os.path.join(export_dir, f"{method}.sparse.safetensors")
            compressor.export(compact)
            result["export_bytes"] = os.path.getsize(compact)
        if mask_file:
            modules = dict(model.named_modules())  # --quick's tiny model lacks the deeper layer
            torch.save({name: modules[name].weight.detach() == 0 for name in MASK_LAYERS if name in modules}, mask_file)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run_worker(method, options, args, export_dir="", mask_file=""):
    command = [sys.executable, __file__, "--worker", method, json.dumps(options), str(args.samples),
               str(args.seq_len), str(args.eval_chunks), export_dir, mask_file]
    environment = {**os.environ, **({"MSMODELSLIM_BENCH_TINY": "1"} if args.quick else {})}
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT / "benchmarks", env=environment)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1][:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# llm-compressor as its README configures it (oneshot with a pruning modifier), in its own virtual environment.
# The LM head and the tied input embedding must stay dense, as in our runs: a plain "lm_head" in `ignore` does not
# match the module's full name, so the regular expression form is used, and the script checks both are unchanged.
LLMC_SCRIPT = r"""
import json, math, resource, sys, time
from importlib import metadata
import datasets, torch, transformers as T
path, method, pattern, calib_file, eval_file, mask_layers, mask_file = sys.argv[1:8]
calibration = torch.load(calib_file); evaluation = torch.load(eval_file)
model = T.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
embedding = model.get_input_embeddings().weight.detach().clone()
head = model.get_output_embeddings().weight.detach().clone()
seconds = None
if method != "dense":
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.obcq import SparseGPTModifier
    data = datasets.Dataset.from_dict({"input_ids": calibration.tolist(),
                                       "attention_mask": torch.ones_like(calibration).tolist()})
    Modifier = SparseGPTModifier if method == "SparseGPT" else WandaPruningModifier
    recipe = Modifier(sparsity=0.5, mask_structure=pattern, targets=["Linear"], ignore=["re:.*lm_head"])
    start = time.perf_counter()
    oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=len(calibration),
            max_seq_length=calibration.shape[1])
    seconds = time.perf_counter() - start
    assert torch.equal(model.get_input_embeddings().weight, embedding), "oneshot changed the input embedding"
    assert torch.equal(model.get_output_embeddings().weight, head), "oneshot changed the LM head"
    if mask_file:
        torch.save({n: model.get_submodule(n).weight.detach() == 0 for n in mask_layers.split(",")}, mask_file)
nll, count = 0.0, 0
with torch.no_grad():
    for chunk in evaluation.split(4):
        logits = model(input_ids=chunk, use_cache=False).logits.float()
        nll += torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 chunk[:, 1:].reshape(-1), reduction="sum").item()
        count += chunk[:, 1:].numel()
versions = {p: metadata.version(p) for p in ("llmcompressor", "compressed-tensors", "transformers", "torch")}
print(json.dumps({"ppl": math.exp(nll / count), "seconds": seconds, "versions": versions,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

COMPARED = (("50% unstructured", {}, "0:0"), ("2:4", {"pattern": "2:4"}, "2:4"))
PAIRS = (("hessian", "SparseGPT"), ("magnitude", "Wanda"))
# plain SparseGPT (no least-squares reconstruction: the mask and update llm-compressor's SparseGPT computes), and
# Wanda's mask with the reconstruction
OURS_ONLY = (("hessian, reconstruct=False", "hessian", {"reconstruct": False}),
             ("magnitude, reconstruct=True", "magnitude", {"reconstruct": True}))


def _llmc_runner(args, folder):
    """A function running one llm-compressor job in its venv, or None when LLMCOMPRESSOR_PYTHON is not set."""
    python = os.environ.get("LLMCOMPRESSOR_PYTHON")
    if not python or not os.path.exists(python):
        return None
    import torch
    import transformers as T

    from msmodelslim import assets

    path = assets.smollm2_135m_dir()
    tokenizer = T.AutoTokenizer.from_pretrained(path)
    calib, evaluation = os.path.join(folder, "calib.pt"), os.path.join(folder, "eval.pt")
    torch.save(assets.wiki_token_chunks(tokenizer, "train", args.samples, args.seq_len), calib)
    torch.save(assets.wiki_token_chunks(tokenizer, "test", args.eval_chunks, args.seq_len), evaluation)
    script = os.path.join(folder, "llmc.py")
    with open(script, "w") as handle:
        handle.write(LLMC_SCRIPT)

    def run(method, pattern, mask_file=""):
        proc = subprocess.run([python, script, str(path), method, pattern, calib, evaluation, ",".join(MASK_LAYERS),
                               mask_file],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode:
            return {"error": proc.stderr.strip().splitlines()[-1][:160]}
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run


def _agreement(ours, theirs):
    """The share of weights on which the two tools' masks agree, per layer of MASK_LAYERS."""
    import torch

    if not (os.path.exists(ours) and os.path.exists(theirs)):
        return ["-"] * len(MASK_LAYERS)
    a, b = torch.load(ours, weights_only=True), torch.load(theirs, weights_only=True)
    return [f"{(a[name] == b[name]).float().mean().item():.2%}"
            if name in a and name in b and a[name].shape == b[name].shape else "-" for name in MASK_LAYERS]


def _perplexities(runs):
    """The perplexities of the rounds of one job: one value, or each distinct one ("a / b") when they differ."""
    return " / ".join(dict.fromkeys(f"{run['ppl']:.2f}" for run in runs))


def _comparison_row(key, runs, agreement):
    """One row of the side-by-side table from the runs of one (setting, tool, method)."""
    errors = [run["error"] for run in runs if "error" in run]
    if errors:
        return [*key, "error", errors[0], "", "", "", "", *agreement]
    seconds = [run["seconds"] for run in runs if run.get("seconds") is not None]
    breakdown = [[run["timings"][part] for run in runs if part in (run.get("timings") or {})]
                 for part in ("forward", "statistics", "solve")]
    return [*key, _perplexities(runs), spread(seconds, "{:.0f}") if seconds else "-",
            *(spread(values, "{:.0f}") if values else "-" for values in breakdown),
            f"{max(run['peak_rss_mb'] for run in runs):.0f}", *agreement]


def comparison_section(args):
    """Ours and llm-compressor on the same model, data and protocol, run interleaved (ours, theirs, ...)."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        theirs = _llmc_runner(args, folder)
        if theirs is None:
            return "llm-compressor: not run (set LLMCOMPRESSOR_PYTHON to the python of a venv where it is installed)."
        results = {}  # (setting, tool, method) -> the result of each round, in the order the rows are shown
        results[("dense", "msmodelslim", "-")] = [run_worker("dense", {}, args)]
        llmc_dense = theirs("dense", "0:0")
        results[("dense", "llm-compressor", "-")] = [llmc_dense]
        for round_ in range(COMPARE_ROUNDS):  # ours, theirs, ours, theirs ...; masks are compared in round 0
            for setting, options, pattern in COMPARED:
                for ours_method, their_method in PAIRS:
                    ours_mask, their_mask = (os.path.join(folder, f"{who}-{ours_method}-{pattern}.pt")
                                             if round_ == 0 else "" for who in ("ours", "theirs"))
                    results.setdefault((setting, "msmodelslim", ours_method), []).append(
                        run_worker(ours_method, options, args, "", ours_mask))
                    results.setdefault((setting, "llm-compressor", their_method), []).append(
                        theirs(their_method, pattern, their_mask))
                    print(setting, ours_method, their_method, round_, flush=True)
                for label, method, extra in OURS_ONLY:
                    results.setdefault((setting, "msmodelslim", label), []).append(
                        run_worker(method, {**options, **extra}, args))
        agreement = {(setting, "llm-compressor", their_method): _agreement(
            *(os.path.join(folder, f"{who}-{ours_method}-{pattern}.pt") for who in ("ours", "theirs")))
            for setting, _, pattern in COMPARED for ours_method, their_method in PAIRS}
    rows = [_comparison_row(key, runs, agreement.get(key, ("-",) * len(MASK_LAYERS)))
            for key, runs in results.items()]
    times = {key: statistics.median(run["seconds"] for run in runs)
             for key, runs in results.items() if all(run.get("seconds") for run in runs)}
    perplexity = {key: statistics.median(run["ppl"] for run in runs)
                  for key, runs in results.items() if all("ppl" in run for run in runs)}
    table = format_table(["setting", "tool", "method", "perplexity", "seconds", "forward s", "statistics s",
                          "solve s", "peak RSS MiB", *(f"mask agreement {name}" for name in MASK_LAYERS)], rows)
    ratios = []
    for setting, _, _ in COMPARED:
        ours_h = times.get((setting, "msmodelslim", "hessian"))
        ours_m = times.get((setting, "msmodelslim", "magnitude"))
        their_h = times.get((setting, "llm-compressor", "SparseGPT"))
        if ours_h and ours_m:
            ratios.append(f"{setting}: hessian / magnitude time {ours_h / ours_m:.2f}")
        if ours_h and their_h:
            ratios.append(f"{setting}: hessian / llm-compressor SparseGPT time {ours_h / their_h:.2f}")
        their_ppl = perplexity.get((setting, "llm-compressor", "SparseGPT"))
        for label in ("hessian", "hessian, reconstruct=False"):
            ours_ppl = perplexity.get((setting, "msmodelslim", label))
            if ours_ppl and their_ppl:
                ratios.append(f"{setting}: {label} / llm-compressor SparseGPT perplexity {ours_ppl / their_ppl:.2f}")
    versions = llmc_dense.get("versions", {})
    their_versions = ", ".join(f"{k} {v}" for k, v in versions.items())
    return (table + "\n\n" + "; ".join(ratios) + ".\n\n"
            f"Same SmolLM2-135M, calibration ({args.samples} x {args.seq_len} tokens) and held-out perplexity "
            f"({args.eval_chunks} x {args.seq_len} tokens) as above; every Linear layer but the LM head sparsified by "
            "both tools (llm-compressor: `ignore=[\"re:.*lm_head\"]`; the script asserts that its input embedding "
            f"and LM head are unchanged after `oneshot`). Runs alternate between the tools, one process each, "
            f"{COMPARE_ROUNDS} rounds (ours, theirs, ours, theirs ...): seconds and their breakdown are the median "
            "(min-max) of the rounds, time ratios divide medians, peak RSS is the largest. 'mask agreement' is the "
            "share of the named layer's weights on which the two tools' masks agree: block 0 sees the same inputs "
            "in both tools, block 15 the outputs of each tool's own sparsified blocks. The forward / statistics / "
            "solve columns are our own breakdown of 'seconds' "
            "(`Compressor.report().timings`). llm-compressor in its own virtual environment: "
            f"{their_versions or 'versions not read'}. Ours: {provenance(load_before=load_before)}.")


def methods_section(args):
    """Every method at every setting on SmolLM2-135M, in METHODS_ROUNDS rounds (perplexity, time, memory, export)."""
    methods = ("magnitude",) if args.quick else METHODS  # --quick: a smoke run of the script and its columns
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows, runs = [], {}
    with tempfile.TemporaryDirectory() as export_dir:
        dense = {} if args.quick else run_worker("dense", {}, args, export_dir)  # --quick: no dense row
        if dense:
            rows.append(["dense", "-", f"{dense['ppl']:.2f}", "-", f"{dense['peak_rss_mb']:.0f}", "-"])
        for round_ in range(METHODS_ROUNDS):  # each round runs every job once; the export is written in round 0
            for label, options in SETTINGS[:1] if args.quick else SETTINGS:
                for method in methods:
                    export = export_dir if not options and round_ == 0 else ""
                    runs.setdefault((label, method), []).append(run_worker(method, options, args, export))
                    print(label, method, runs[(label, method)][-1], flush=True)
    for (label, method), results in runs.items():
        errors = [result["error"] for result in results if "error" in result]
        if errors:
            rows.append([label, method, "error", errors[0], "", ""])
            continue
        size = (f"{results[0]['export_bytes'] / dense['dense_bytes']:.1%}"
                if "export_bytes" in results[0] and dense else "-")
        rows.append([label, method, _perplexities(results),
                     spread([result["seconds"] for result in results], "{:.0f}"),
                     f"{max(result['peak_rss_mb'] for result in results):.0f}", size])
    table = format_table(["setting", "method", "perplexity", "seconds", "peak RSS MiB", "export / dense file"], rows)
    return (table + "\n\n" + f"SmolLM2-135M (fp32, dequantised Q4_1 weights), {args.samples} calibration sequences x "
            f"{args.seq_len} tokens (Wikipedia train split), perplexity on {args.eval_chunks} x {args.seq_len} test "
            "tokens. Every Linear layer but lm_head is sparsified (210 layers); `hessian` is SparseGPT followed "
            "by its default least-squares reconstruction of the kept weights (`reconstruct`). 'seconds' is "
            "compress() alone, the "
            f"median (min-max) of {METHODS_ROUNDS} rounds (each round runs every row once, one process per run); "
            "peak RSS is the whole process (model, data, evaluation), the largest of the rounds. The export is the "
            "compact bitmask file (Compressor.export) against the dense safetensors file. Total time "
            f"{time.perf_counter() - started:.0f} s, measured at {provenance(load_before=load_before)}.")


STREAM_SCRIPT = r"""
import json, os, sys, time
import torch, transformers as T
from msmodelslim import set_logger_level
from msmodelslim.pytorch.sparse.sparse_tools import Compressor, SparseConfig, sparsify_checkpoint
from zoo.resident import PeakResident

set_logger_level("warning")
mode, source, out, vocab = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
T.LlamaForCausalLM(T.LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                 num_attention_heads=2))  # the imports both paths need, before measuring
data = [{"input_ids": torch.randint(0, vocab, (2, 128), generator=torch.Generator().manual_seed(i))} for i in range(2)]
memory = PeakResident()
start = time.perf_counter()
if mode == "in memory":
    model = T.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    compressor = Compressor(model, SparseConfig(method="magnitude"))
    compressor.compress(data)
    model.save_pretrained(out)
    compressor.export(os.path.join(out, "model.sparse.safetensors"))
else:
    sparsify_checkpoint(source, SparseConfig(method="magnitude"), out, data)
seconds = time.perf_counter() - start
print(json.dumps({"extra": memory.above_start(), "seconds": seconds}))
"""


def _write_random_llama(folder, config):
    """A random-weight Llama checkpoint, written one block at a time (the benchmark itself stays small)."""
    import torch
    import transformers as T
    from accelerate import init_empty_weights

    from msmodelslim.pytorch.sparse.sparse_tools.streaming import INDEX_NAME
    from safetensors.torch import save_file

    with init_empty_weights():
        skeleton = T.LlamaForCausalLM(config)
    os.makedirs(folder)
    config.save_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    shards, weight_map = {}, {}
    for name, parameter in skeleton.named_parameters():
        part = name.split(".")[2] if name.startswith("model.layers.") else "rest"
        shards.setdefault(part, []).append((name, tuple(parameter.shape)))
    for index, (part, tensors) in enumerate(shards.items()):
        file = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        state = {name: (torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=generator) * 0.02)
                 for name, shape in tensors}
        save_file(state, os.path.join(folder, file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(state, file))
    with open(os.path.join(folder, INDEX_NAME), "w") as handle:
        json.dump({"metadata": {}, "weight_map": weight_map}, handle)


def _same_weights(first, second):
    """Whether two Hugging Face directories hold the same tensors, compared one at a time."""
    from msmodelslim.utils.checkpoint import open_checkpoint
    import torch

    with open_checkpoint(first) as a, open_checkpoint(second) as b:
        if set(a.keys()) != set(b.keys()):
            return False
        return all(torch.equal(a.get(key), b.get(key)) for key in a.keys())


def stream_section(args):
    """Peak memory and time of sparsifying a checkpoint in memory and streamed, and whether the results agree."""
    import shutil

    import transformers as T
    from common import provenance

    load_before = os.getloadavg()[0]
    if args.quick:
        config = T.LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                               num_attention_heads=8, tie_word_embeddings=False)
    else:
        config = T.LlamaConfig(vocab_size=8192, hidden_size=2048, intermediate_size=4096, num_hidden_layers=18,
                               num_attention_heads=16, tie_word_embeddings=False)
    work = tempfile.mkdtemp(prefix="msmodelslim-stream-", dir=os.environ.get("MSMODELSLIM_BENCH_TMP"))
    try:
        source = os.path.join(work, "source")
        _write_random_llama(source, config)
        size = sum(os.path.getsize(os.path.join(source, f)) for f in os.listdir(source) if f.endswith(".safetensors"))
        script = os.path.join(work, "stream.py")
        with open(script, "w") as handle:
            handle.write(STREAM_SCRIPT)
        modes, runs, errors = ("in memory", "streamed"), {}, {}
        for round_ in range(STREAM_ROUNDS):  # interleaved: in memory, streamed, in memory, streamed
            for mode in modes:
                out = os.path.join(work, f"{mode.replace(' ', '-')}-{round_}")
                proc = subprocess.run([sys.executable, script, mode, source, out, str(config.vocab_size)],
                                      capture_output=True, text=True, cwd=ROOT / "benchmarks",
                                      env={**os.environ, "PYTHONPATH": str(ROOT / "tests")})
                if proc.returncode:
                    errors[mode] = proc.stderr.strip().splitlines()[-1][:160]
                    continue
                runs.setdefault(mode, []).append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(mode, runs[mode][-1], flush=True)
        first = [os.path.join(work, f"{mode.replace(' ', '-')}-0") for mode in modes]
        same = (("yes" if _same_weights(*first) else "NO") if all(os.path.isdir(path) for path in first) else "")
        rows = []
        for mode in modes:
            if mode in errors:
                rows.append([mode, "error", errors[mode], "", ""])
                continue
            extra = max(run["extra"] for run in runs[mode])
            rows.append([mode, f"{extra / 2**20:.0f}", f"{extra / size:.2f}",
                         spread([run["seconds"] for run in runs[mode]], "{:.0f}"), same if mode == "streamed" else ""])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = format_table(["path", "peak memory above start MiB", "/ checkpoint size", "seconds",
                          "same weights as in memory"], rows)
    params = (config.num_hidden_layers * (4 * config.hidden_size ** 2 + 3 * config.hidden_size
                                          * config.intermediate_size) + 2 * config.vocab_size * config.hidden_size)
    return (table + "\n\n" + f"A random-weight Llama ({config.num_hidden_layers} blocks, hidden {config.hidden_size}, "
            f"FFN {config.intermediate_size}, vocab {config.vocab_size}: {params / 1e6:.0f} M parameters, "
            f"{size / 2**30:.2f} GiB of fp32 safetensors, one shard per block) sparsified with `magnitude` at 50 % "
            "from 2 x 2 x 128 random tokens, each path in its own process: `Compressor` on the model loaded with "
            "`from_pretrained`, then `save_pretrained` and `export`; `sparsify_checkpoint` on the directory. "
            f"Each path runs {STREAM_ROUNDS} times, alternately; seconds: median (min-max), memory: the largest "
            "resident size sampled every 5 ms, above the size after the imports both paths need. The last column "
            "compares every tensor of the two outputs. " + provenance(load_before=load_before) + ".")


PARTS = {"methods": ("SmolLM2-135M", methods_section),
         "stream": ("A 3 GB checkpoint: streamed against in memory", stream_section),
         "compare": ("SmolLM2-135M: msmodelslim and llm-compressor side by side", comparison_section)}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        method, options, samples, seq_len, chunks, export_dir, mask_file = sys.argv[2:9]
        worker(method, json.loads(options), int(samples), int(seq_len), int(chunks), export_dir, mask_file)
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 x 64 calibration tokens, one method")
    parser.add_argument("--part", choices=sorted(PARTS) + ["all"], default="all",
                        help="measure one section of sparse.md (the others are kept as they are)")
    parser.add_argument("--results", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    args.samples, args.seq_len, args.eval_chunks = (2, 64, 2) if args.quick else (32, 512, 16)
    parts = sorted(PARTS) if args.part == "all" else [args.part]
    sections = [(PARTS[part][0], PARTS[part][1](args)) for part in parts]
    merge_result("sparse", "Sparse tool (SparseConfig / Compressor)", sections, args.results)


if __name__ == "__main__":
    main()
