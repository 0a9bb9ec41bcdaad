"""GPU evidence: the CUDA tests and the GPU rows of the sparse benchmark, on one GPU.

1. Runs ``tests/test_cuda.py`` and keeps its log.
2. Sparse tool on the GPU: Wanda (``magnitude``) and SparseGPT (``hessian``, 50 % and 2:4) on random-weight Llamas
   in bf16 (SmolLM2-135M's shape, a 1.0 B model, a 7 B-shaped model while the time budget lasts), calibrated on
   32 x 512 random tokens: time, its breakdown and peak GPU memory; SparseGPT's column loop replayed from CUDA
   graphs and run op by op, with the check that both give the same weights.
3. The 1.0 B checkpoint sparsified block by block through the GPU (``sparsify_checkpoint(device="cuda")``) against
   the whole model on the GPU: time, peak GPU memory, same weights.
4. 2:4 on semi-structured sparse kernels (``to_semi_structured``): one Linear per shape and token count, and the
   1.0 B model end to end, against dense, for cuSPARSELt and CUTLASS.

Random weights: real checkpoints cannot travel to the GPU machine, and time and memory do not depend on the values.
Writes benchmarks/results/gpu.md (each section as soon as it is measured).
Run: python benchmarks/bench_gpu.py [--quick] [--budget SECONDS] [--results DIR]; ``--quick`` runs tiny shapes and
also runs without a GPU (then on the CPU, without the CUDA-only rows).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import ROOT, merge_result, provenance, spread
from msmodelslim.utils.report import format_table

TITLE = "GPU evidence (tests/test_cuda.py and the GPU rows of the benchmarks)"
PACKAGES = ("torch", "transformers", "accelerate", "safetensors")
GiB = 2 ** 30


def _device_line(torch):
    if not torch.cuda.is_available():
        return f"no CUDA device; torch {torch.__version__} on the CPU ({os.cpu_count()} cores)"
    properties = torch.cuda.get_device_properties(0)
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    cusparselt = getattr(torch.backends, "cusparselt", None)
    sparselt = cusparselt.version() if cusparselt is not None and cusparselt.is_available() else "not available"
    return (f"{properties.name}, capability {properties.major}.{properties.minor}, "
            f"{properties.total_memory / GiB:.0f} GiB, {properties.multi_processor_count} SMs, driver {driver}, "
            f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuSPARSELt {sparselt}")


def cuda_tests_section(args):
    """Run tests/test_cuda.py; the summary, each test's outcome, and the log's tail."""
    if args.quick:
        return "Not run with `--quick`."
    proc = subprocess.run([sys.executable, "-m", "pytest", "-rA", "-q", "-p", "no:cacheprovider",
                           "tests/test_cuda.py"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])})
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    outcomes = [line.split(" ", 1) for line in lines if line.startswith(("PASSED ", "FAILED ", "SKIPPED ", "ERROR "))]
    table = format_table(["outcome", "test"], [[outcome, test] for outcome, test in outcomes])
    tail = "\n".join(lines[-25:])
    return f"{table}\n\nSummary: `{lines[-1] if lines else 'no output'}`\n\n```\n{tail}\n```"


class Budget:
    """Seconds left of the run's budget; optional rows are skipped once it is spent."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()


def _llama_configs(quick):
    import transformers as T

    def llama(hidden, ffn, layers, heads, kv_heads, vocab):
        return T.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=False,
                             max_position_embeddings=4096)
    if quick:
        return {"tiny Llama": llama(128, 256, 2, 4, 2, 512), "tiny Llama (second)": llama(128, 384, 3, 4, 2, 512)}
    return {"SmolLM2-135M shape": llama(576, 1536, 30, 9, 3, 49152),
            "Llama 1.0 B": llama(2048, 5632, 20, 32, 4, 32000),
            "Llama 7 B shape": llama(4096, 11008, 32, 32, 32, 32000)}


def _parameters(config):
    head = config.hidden_size // config.num_attention_heads
    attention = 2 * config.hidden_size ** 2 + 2 * config.hidden_size * config.num_key_value_heads * head
    block = attention + 3 * config.hidden_size * config.intermediate_size
    return config.num_hidden_layers * block + 2 * config.vocab_size * config.hidden_size


def _calibration(torch, config, device, samples, seq_len):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (samples, seq_len), generator=generator)
    return [{"input_ids": chunk.to(device)} for chunk in tokens.split(4)]


def _sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(torch, device):
    return torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else float("nan")


def _sparsify(torch, model, pristine, data, device, method, pattern=None, graphs=True):
    """Load the pristine weights, sparsify; ``(seconds, peak GPU GiB, timings)``."""
    from msmodelslim.pytorch.sparse.sparse_tools import Compressor, SparseConfig
    from msmodelslim.pytorch.sparse.sparse_tools.methods import sparsegpt

    model.load_state_dict(pristine)
    options = {"pattern": pattern} if pattern else {}
    compressor = Compressor(model, SparseConfig(method=method, **options))
    _peak_reset(torch, device)
    sparsegpt.USE_CUDA_GRAPHS = graphs
    try:
        start = time.perf_counter()
        compressor.compress(data)
        _sync(torch, device)
        seconds = time.perf_counter() - start
    finally:
        sparsegpt.USE_CUDA_GRAPHS = True
    return seconds, _peak(torch, device), compressor.report().timings


def _model_dtype(torch, device):
    """bf16 on the GPU (what a user runs there), float32 on the CPU of a --quick run."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _same_state(first, second):
    import torch

    return all(torch.equal(value, second[name]) for name, value in first.items())


def _cpu_state(model):
    return {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}


def sparse_section(args, budget, state, models):
    """Time and peak memory of each method on ``models`` (indices into the model list); graphs against op by op
    on the smaller ones."""
    import torch
    import transformers as T

    from msmodelslim import set_logger_level

    set_logger_level("warning")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _model_dtype(torch, device)
    rows, notes = [], []
    samples, seq_len = (4, 64) if args.quick else (32, 512)
    for index, (label, config) in enumerate(_llama_configs(args.quick).items()):
        if index not in models:
            continue
        if index == 2 and budget.left() < 120:
            notes.append(f"{label}: not measured (time budget: {budget.left():.0f} s left)")
            continue
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch.manual_seed(0)
        with torch.device(device):
            model = T.LlamaForCausalLM._from_config(config, dtype=dtype).eval()
        pristine = {name: value.clone() for name, value in model.state_dict().items()}
        weights = sum(v.numel() * v.element_size() for v in pristine.values()) / GiB
        data = _calibration(torch, config, device, samples, seq_len)
        _sparsify(torch, model, pristine, data[:1], device, "magnitude")  # warm-up: CUDA context, kernels

        def row(method, setting, seconds, peak, timings, same="-"):
            parts = ", ".join(f"{part} {value:.1f}" for part, value in timings.items())
            return [label, method, setting, spread(seconds), peak, parts, same]

        magnitude, hessian = [], []
        repeats = 1 if index == 2 or args.quick else 2
        for _ in range(repeats):  # interleaved
            seconds, mag_peak, mag_timings = _sparsify(torch, model, pristine, data, device, "magnitude")
            magnitude.append(seconds)
            seconds, hes_peak, hes_timings = _sparsify(torch, model, pristine, data, device, "hessian")
            hessian.append(seconds)
        graphs_result = _cpu_state(model)
        rows.append(row("magnitude", "50 %", magnitude, f"{mag_peak:.2f}", mag_timings))
        rows.append(row("hessian", "50 %, CUDA graphs", hessian, f"{hes_peak:.2f}", hes_timings))
        ratio = statistics.median(hessian) / statistics.median(magnitude)
        notes.append(f"{label} ({_parameters(config) / 1e9:.2f} B parameters, {weights:.2f} GiB of weights): "
                     f"hessian / magnitude = {ratio:.2f}x")
        if index < 2 and (device.type == "cuda" or args.quick):
            seconds, peak, timings = _sparsify(torch, model, pristine, data, device, "hessian", graphs=False)
            same = "yes" if _same_state(graphs_result, _cpu_state(model)) else "NO"
            rows.append(row("hessian", "50 %, op by op", [seconds], f"{peak:.2f}", timings, same))
        seconds, peak, timings = _sparsify(torch, model, pristine, data, device, "hessian", "2:4")
        rows.append(row("hessian", "2:4, CUDA graphs", [seconds], f"{peak:.2f}", timings))
        if index == 1 or args.quick:
            state["two_four"] = (label, config, _cpu_state(model))
            state["hessian"] = (label, config, pristine, data)
        if index == 0 and (device.type == "cuda" or args.quick):
            two_four = _cpu_state(model)
            seconds, peak, timings = _sparsify(torch, model, pristine, data, device, "hessian", "2:4", graphs=False)
            same = "yes" if _same_state(two_four, _cpu_state(model)) else "NO"
            rows.append(row("hessian", "2:4, op by op", [seconds], f"{peak:.2f}", timings, same))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(format_table(HEADER, rows), flush=True)
    table = format_table(HEADER, rows)
    return (f"{table}\n\n" + "\n".join(f"- {note}" for note in notes) + "\n\n"
            f"{str(dtype)[6:]} weights on {device.type}, {samples} x {seq_len} random calibration tokens in batches "
            "of 4. "
            "Seconds: median (min-max) of interleaved runs where there are two. Peak: `max_memory_allocated`, "
            "weights included. 'same' compares every weight with the CUDA-graph run above it. "
            + provenance(PACKAGES) + ".")


HEADER = ["model", "method", "setting", "seconds", "peak GPU GiB", "breakdown (s)", "same as graphs"]


def stream_section(args, state):
    """The 1.0 B checkpoint sparsified streamed through the GPU and, loaded with ``from_pretrained``, in memory."""
    import shutil

    import torch
    import transformers as T

    from msmodelslim.pytorch.sparse.sparse_tools import Compressor, SparseConfig, sparsify_checkpoint
    from msmodelslim.utils.checkpoint import open_checkpoint

    if "hessian" not in state:
        return "Not measured: the section above did not complete."
    label, config, pristine, data = state.pop("hessian")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = tempfile.mkdtemp(prefix="msmodelslim-gpu-")
    source, out = os.path.join(work, "source"), os.path.join(work, "out")
    try:
        with torch.device("meta"):
            skeleton = T.LlamaForCausalLM(config)
        skeleton.load_state_dict({k: v.cpu() for k, v in pristine.items()}, assign=True)
        skeleton.save_pretrained(source, max_shard_size="500MB")
        del skeleton, pristine
        model = T.AutoModelForCausalLM.from_pretrained(source, dtype=_model_dtype(torch, device)).to(device)
        _peak_reset(torch, device)
        start = time.perf_counter()
        Compressor(model, SparseConfig(method="hessian")).compress(data)
        _sync(torch, device)
        rows = [[label, f"in memory (from_pretrained, then Compressor on {device.type})",
                 f"{time.perf_counter() - start:.1f}", f"{_peak(torch, device):.2f}", "-"]]
        in_memory = _cpu_state(model)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _peak_reset(torch, device)
        start = time.perf_counter()
        sparsify_checkpoint(source, SparseConfig(method="hessian"), out, data, device=device.type)
        _sync(torch, device)
        seconds, peak = time.perf_counter() - start, _peak(torch, device)
        with open_checkpoint(out) as streamed:
            same = all(torch.equal(streamed.get(name), value) for name, value in in_memory.items())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows.append([label, f"streamed (sparsify_checkpoint, device={device.type!r})", f"{seconds:.1f}", f"{peak:.2f}",
                 "yes" if same else "NO"])
    return (format_table(["model", "path", "seconds", "peak GPU GiB", "same weights as in memory"], rows) + "\n\n"
            "`hessian` at 50 %, the same weights and calibration data as the section above; the streamed seconds "
            "include reading every block and writing the output (bf16 safetensors, 500 MB shards, local disk). "
            + provenance(PACKAGES) + ".")


def _cuda_median_ms(torch, fn, warmup=5, repeat=20):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def semi_structured_section(args, state):
    """Dense against 2:4 semi-structured: one Linear per shape and token count, then the model end to end."""
    import torch
    import torch.nn.functional as F
    import transformers as T

    from msmodelslim.pytorch.sparse.sparse_tools import to_semi_structured
    from msmodelslim.pytorch.sparse.sparse_tools.semi_structured import BACKENDS, _tensor_class

    if not torch.cuda.is_available():
        return "Not measured: semi-structured sparse kernels need a CUDA device."
    dtype = torch.bfloat16
    shapes = [(256, 256)] if args.quick else [(4096, 4096), (11008, 4096), (4096, 11008)]
    token_counts = [16, 256] if args.quick else [16, 512, 4096, 16384]
    generator = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for out_features, in_features in shapes:
        weight = torch.randn(out_features, in_features, device="cuda", dtype=dtype, generator=generator)
        keep = torch.rand(out_features, in_features // 4, 4, device="cuda", generator=generator).argsort(-1)[..., :2]
        weight = weight.reshape(out_features, -1, 4).scatter(-1, keep, 0).reshape(out_features, in_features)
        compressed = {}
        for backend in BACKENDS:
            try:
                compressed[backend] = _tensor_class(backend).from_dense(weight)
            except RuntimeError as error:
                compressed[backend] = str(error).splitlines()[0][:80]
        for tokens in token_counts:
            x = torch.randn(tokens, in_features, device="cuda", dtype=dtype, generator=generator)
            dense = _cuda_median_ms(torch, lambda: F.linear(x, weight))
            row = [f"{out_features}x{in_features}", tokens, f"{dense * 1000:.0f}"]
            for backend in BACKENDS:
                sparse = compressed[backend]
                if isinstance(sparse, str):
                    row += [sparse, "-"]
                    continue
                try:
                    ms = _cuda_median_ms(torch, lambda: F.linear(x, sparse))
                except RuntimeError as error:  # e.g. kernels built for another GPU generation
                    compressed[backend] = str(error).splitlines()[0][:80]
                    row += [compressed[backend], "-"]
                else:
                    row += [f"{ms * 1000:.0f}", f"{dense / ms:.2f}x"]
            rows.append(row)
        print(rows[-1], flush=True)
    linear_table = format_table(["weight (out x in)", "tokens", "dense µs", "cuSPARSELt µs", "speed-up",
                                 "CUTLASS µs", "speed-up"], rows)
    model_rows = []
    if "two_four" in state:
        label, config, two_four = state.pop("two_four")
        with torch.device("cuda"):
            model = T.LlamaForCausalLM._from_config(config, dtype=dtype).eval()
        batches = [(1, 128), (4, 512)] if args.quick else [(1, 128), (8, 512), (16, 1024)]
        for batch, length in batches:
            ids = torch.randint(0, config.vocab_size, (batch, length), device="cuda", generator=generator)
            model.load_state_dict(two_four)
            with torch.no_grad():
                dense_logits = model(input_ids=ids).logits.float()
                dense = _cuda_median_ms(torch, lambda: model(input_ids=ids), warmup=3, repeat=10)
                row = [label, f"{batch} x {length}", f"{dense:.1f}"]
                for backend in BACKENDS:
                    model.load_state_dict(two_four)
                    report = to_semi_structured(model, backend=backend, skip=["lm_head"])
                    if not report.converted:
                        row += [f"none converted: {next(iter(report.skipped.values()))[:60]}", "-", "-"]
                        continue
                    try:
                        logits = model(input_ids=ids).logits.float()
                        ms = _cuda_median_ms(torch, lambda: model(input_ids=ids), warmup=3, repeat=10)
                    except RuntimeError as error:
                        row += [str(error).splitlines()[0][:60], "-", "-"]
                    else:
                        gap = ((logits - dense_logits).abs().max() / dense_logits.abs().max()).item()
                        row += [f"{ms:.1f} ({len(report.converted)} layers)", f"{dense / ms:.2f}x", f"{gap:.3f}"]
                    for name in report.converted:  # back to dense tensors for the next backend
                        module = model.get_submodule(name)
                        module.weight = torch.nn.Parameter(two_four[f"{name}.weight"].to("cuda"), requires_grad=False)
                model_rows.append(row)
            print(model_rows[-1], flush=True)
        del model
    model_table = format_table(["model (2:4 by hessian)", "batch x tokens", "dense ms", "cuSPARSELt ms", "speed-up",
                                "max logit gap", "CUTLASS ms", "speed-up", "max logit gap"], model_rows)
    capability = ".".join(map(str, torch.cuda.get_device_capability()))
    return (f"One Linear (bf16, random 2:4 weight, `F.linear`, CUDA-event median of 20 after 5 warm-ups):\n\n"
            f"{linear_table}\n\nThe whole model's forward (every Linear of the blocks converted with "
            f"`to_semi_structured`, the LM head dense; median of 10 after 3 warm-ups; max logit gap relative to the "
            f"largest dense logit):\n\n{model_table}\n\nConditions: CUDA capability {capability} (8.0 or more "
            f"needed), bf16, both weight dimensions multiples of the backend's tile (cuSPARSELt 16 x 16, CUTLASS "
            f"32 x 64). " + provenance(PACKAGES) + ".")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, CPU allowed, no CUDA test run")
    parser.add_argument("--budget", type=float, default=420, help="seconds after which optional rows are skipped")
    parser.add_argument("--results", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available() and not args.quick:
        print("bench_gpu.py measures a CUDA device and there is none: gpu.md is left as it is (--quick runs on CPU)")
        return
    budget, state = Budget(args.budget), {}
    merge_result("gpu", TITLE, [("Device", _device_line(torch) + ".\n\n" + provenance(PACKAGES) + ".")], args.results)
    steps = [("CUDA tests", lambda: cuda_tests_section(args)),
             ("Sparse tool on the GPU: time and memory", lambda: sparse_section(args, budget, state, (0, 1))),
             ("A checkpoint streamed block by block through the GPU", lambda: stream_section(args, state)),
             ("2:4 on semi-structured sparse kernels", lambda: semi_structured_section(args, state)),
             ("Sparse tool on the GPU: a 7 B-shaped model", lambda: sparse_section(args, budget, state, (2,)))]
    for heading, step in steps:
        started = time.monotonic()
        try:
            text = step()
        except Exception as error:  # a failed section is reported, the others still run
            import traceback

            traceback.print_exc()
            text = f"Failed: `{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}`"
        print(f"{heading}: {time.monotonic() - started:.0f} s", flush=True)
        merge_result("gpu", TITLE, [(heading, text)], args.results)


if __name__ == "__main__":
    main()
