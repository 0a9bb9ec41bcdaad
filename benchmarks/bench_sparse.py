"""Sparse tool benchmark on SmolLM2-135M: perplexity, wall time and peak memory of every method at 50 %
unstructured, 2:4 and non-uniform (OWL), the compact export size, and llm-compressor side by side when available.

Protocol (README, "Perplexity protocol"): 32 calibration sequences x 512 tokens from the Wikipedia train split,
perplexity on 16 x 512 tokens of the test split. Each run is a separate process (clean peak RSS).

Writes benchmarks/results/sparse.md. Run: python benchmarks/bench_sparse.py [--quick]
Set LLMCOMPRESSOR_PYTHON to the python of a venv with llmcompressor to add its SparseGPT and Wanda.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from common import ROOT, write_result
from msmodelslim.utils.report import format_table

METHODS = ("weight_magnitude", "magnitude", "hessian", "par", "par_v2")
SETTINGS = (("50% unstructured", {}), ("2:4", {"pattern": "2:4"}), ("50% OWL (uniform=False)", {"uniform": False}))


def worker(method, options, samples, seq_len, eval_chunks, export_dir):
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
    model = T.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    result = {}
    if method == "dense":
        result["ppl"] = perplexity(model, evaluation)
        dense_file = os.path.join(export_dir, "dense.safetensors")
        save_state_dict(model.state_dict(), dense_file)
        result["dense_bytes"] = os.path.getsize(dense_file)
    else:
        compressor = Compressor(model, SparseConfig(method=method, **options))
        start = time.perf_counter()
        compressor.compress(calibration)
        result["seconds"] = time.perf_counter() - start
        result["ppl"] = perplexity(model, evaluation)
        result["sparsity"] = compressor.report().overall_sparsity
        if export_dir:
            compact = os.path.join(export_dir, f"{method}.sparse.safetensors")
            compressor.export(compact)
            result["export_bytes"] = os.path.getsize(compact)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run_worker(method, options, args, export_dir=""):
    command = [sys.executable, __file__, "--worker", method, json.dumps(options), str(args.samples),
               str(args.seq_len), str(args.eval_chunks), export_dir]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT / "benchmarks")
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1][:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


LLMC_SCRIPT = r"""
import json, resource, sys, time, datasets, torch, transformers as T
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import WandaPruningModifier
from llmcompressor.modifiers.obcq import SparseGPTModifier
path, method, pattern, calib_file, eval_file = sys.argv[1:6]
calibration = torch.load(calib_file); evaluation = torch.load(eval_file)
model = T.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
data = datasets.Dataset.from_dict({"input_ids": calibration.tolist(),
                                   "attention_mask": torch.ones_like(calibration).tolist()})
Modifier = SparseGPTModifier if method == "SparseGPT" else WandaPruningModifier
recipe = Modifier(sparsity=0.5, mask_structure=pattern, targets=["Linear"], ignore=["lm_head"])
start = time.perf_counter()
oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=len(calibration),
        max_seq_length=calibration.shape[1])
seconds = time.perf_counter() - start
nll, count = 0.0, 0
with torch.no_grad():
    for chunk in evaluation.split(4):
        logits = model(input_ids=chunk, use_cache=False).logits.float()
        nll += torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1),
                                                 reduction="sum").item()
        count += chunk[:, 1:].numel()
import math
print(json.dumps({"ppl": math.exp(nll / count), "seconds": seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def llmcompressor_rows(args):
    python = os.environ.get("LLMCOMPRESSOR_PYTHON")
    if not python or not os.path.exists(python):
        return [], "llm-compressor: not run (set LLMCOMPRESSOR_PYTHON to the python of a venv where it is installed)."
    import torch
    import transformers as T

    from msmodelslim import assets

    path = assets.smollm2_135m_dir()
    tokenizer = T.AutoTokenizer.from_pretrained(path)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        calib, evaluation = os.path.join(folder, "calib.pt"), os.path.join(folder, "eval.pt")
        torch.save(assets.wiki_token_chunks(tokenizer, "train", args.samples, args.seq_len), calib)
        torch.save(assets.wiki_token_chunks(tokenizer, "test", args.eval_chunks, args.seq_len), evaluation)
        script = os.path.join(folder, "llmc.py")
        with open(script, "w") as handle:
            handle.write(LLMC_SCRIPT)
        for label, pattern in (("50% unstructured", "0:0"), ("2:4", "2:4")):
            for method in ("SparseGPT", "Wanda"):
                proc = subprocess.run([python, script, str(path), method, pattern, calib, evaluation],
                                      capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
                if proc.returncode:
                    rows.append([label, f"llm-compressor {method}", "error", proc.stderr.strip()[-120:], "", ""])
                    continue
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append([label, f"llm-compressor {method}", f"{result['ppl']:.2f}", f"{result['seconds']:.0f}",
                             f"{result['peak_rss_mb']:.0f}", "-"])
                print(rows[-1], flush=True)
    return rows, "llm-compressor 0.14.0.1 (its own venv, transformers 5.17), same model, data and protocol."


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        method, options, samples, seq_len, chunks, export_dir = sys.argv[2:8]
        worker(method, json.loads(options), int(samples), int(seq_len), int(chunks), export_dir)
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 calibration sequences of 256 tokens, 2 methods")
    args = parser.parse_args()
    args.samples, args.seq_len, args.eval_chunks = (4, 256, 4) if args.quick else (32, 512, 16)
    methods = ("magnitude", "weight_magnitude") if args.quick else METHODS
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as export_dir:
        dense = run_worker("dense", {}, args, export_dir)
        rows.append(["dense", "-", f"{dense['ppl']:.2f}", "-", f"{dense['peak_rss_mb']:.0f}", "-"])
        for label, options in SETTINGS:
            for method in methods:
                export = export_dir if not options else ""
                result = run_worker(method, options, args, export)
                if "error" in result:
                    rows.append([label, method, "error", result["error"], "", ""])
                    continue
                size = (f"{result['export_bytes'] / dense['dense_bytes']:.1%}" if "export_bytes" in result else "-")
                rows.append([label, method, f"{result['ppl']:.2f}", f"{result['seconds']:.0f}",
                             f"{result['peak_rss_mb']:.0f}", size])
                print(rows[-1], flush=True)
    llmc_rows, llmc_note = llmcompressor_rows(args) if not args.quick else ([], "llm-compressor: not run (--quick).")
    table = format_table(["setting", "method", "perplexity", "seconds", "peak RSS MiB", "export / dense file"],
                         rows + llmc_rows)
    note = (f"SmolLM2-135M (fp32, dequantised Q4_1 weights), {args.samples} calibration sequences x {args.seq_len} "
            f"tokens (Wikipedia train split), perplexity on {args.eval_chunks} x {args.seq_len} test tokens. "
            "Every Linear layer but lm_head is sparsified (210 layers). 'seconds' is compress() alone; peak RSS is "
            "the whole process (model, data, evaluation). The export is the compact bitmask file "
            f"(Compressor.export) against the dense safetensors file. {llmc_note} "
            f"Total benchmark time {time.perf_counter() - started:.0f} s.")
    write_result("sparse", "Sparse tool (SparseConfig / Compressor)", [("SmolLM2-135M", table + "\n\n" + note)])


if __name__ == "__main__":
    main()
