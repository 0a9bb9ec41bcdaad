"""``msmodelslim sparse MODEL``: sparsify a causal language model, measure it, save it."""
import argparse
import os

from msmodelslim.cli.common import (UsageError, add_output_arguments, calibration_texts, check_causal_lm_config,
                                    directory_size, load_causal_lm, positive_ratio, reading, token_chunks)
from msmodelslim.cli.output import OutputDirectory

METHODS = ("magnitude", "hessian", "par", "par_v2", "wanda", "sparsegpt", "dsnot", "weight_magnitude")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "sparse", help="one-shot sparsity of a causal language model",
        description="Sparsify every Linear layer but lm_head of a causal language model from calibration text; "
                    "save it as a Hugging Face directory and a compact sparse file; report perplexity before and "
                    "after on held-out Wikipedia text, per-layer sparsity and file sizes.")
    parser.add_argument("model", help="a Hugging Face model directory or a .gguf file")
    parser.add_argument("--method", default="magnitude", choices=METHODS, help="sparsification method")
    parser.add_argument("--ratio", type=positive_ratio, default=0.5, help="fraction of zeros (default 0.5)")
    parser.add_argument("--pattern", default="unstructured", help="'unstructured' or N:M, e.g. 2:4")
    parser.add_argument("--owl", action="store_true", help="non-uniform per-layer ratios (OWL, uniform=False)")
    parser.add_argument("--progressive", action="store_true", help="sparsify in stages (MLP, attention out, q/k/v)")
    parser.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=None,
                        help="re-solve the kept weights by least squares after each mask (default: on for hessian "
                             "and sparsegpt only; --no-reconstruct gives plain SparseGPT)")
    parser.add_argument("--calib", default="wiki", help="'wiki', a .txt file or a .jsonl file (default wiki)")
    parser.add_argument("--samples", type=int, default=16, help="calibration sequences (default 16)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--eval-samples", type=int, default=8, help="held-out sequences for perplexity (default 8)")
    add_output_arguments(parser, required=True)
    parser.set_defaults(run=run)


def run(args):
    """Check everything the command line says, then sparsify, measure and write ``--out``."""
    if min(args.samples, args.eval_samples) < 1:
        raise UsageError("--samples, --seq-len and --eval-samples must be positive")
    if args.seq_len < 2:
        raise UsageError(f"--seq-len must be at least 2 (perplexity predicts each token from the ones before), "
                         f"got {args.seq_len}")
    from msmodelslim.pytorch.sparse.sparse_tools import SparseConfig

    try:
        config = SparseConfig(method=args.method, sparse_ratio=args.ratio, pattern=args.pattern,
                              uniform=not args.owl, progressive=args.progressive,
                              reconstruct=args.reconstruct)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    calib_file = None if args.calib == "wiki" else args.calib
    with OutputDirectory(args.out, (args.model, calib_file), args.overwrite, "sparse") as output:
        _sparsify(args, config, output)


def _sparsify(args, config, output):
    texts = calibration_texts(args.calib)
    if _streamable(args.model):
        text = _sparsify_streamed(args, config, output, texts)
    else:
        text = _sparsify_in_memory(args, config, output, texts)
    print(text.split("\n## Layers")[0])
    print(f"Written to {os.path.abspath(args.out)}")


def _sparsify_in_memory(args, config, output, texts):
    """Load the whole model (a GGUF file, a pickle checkpoint), sparsify, measure, write."""
    from msmodelslim.pytorch.sparse.sparse_tools import Compressor
    from msmodelslim.utils.checkpoint import save_state_dict
    from msmodelslim.pytorch.utils.evaluation import perplexity

    model, tokenizer = load_causal_lm(args.model)
    calibration, held_out = _token_data(args, tokenizer, texts)
    before = perplexity(model, held_out)
    compressor = Compressor(model, config)
    compressor.compress([{"input_ids": chunk.unsqueeze(0)} for chunk in calibration])
    after = perplexity(model, held_out)
    report = compressor.report()
    with output.writing() as staging:
        model.save_pretrained(os.path.join(staging, "model"))
        tokenizer.save_pretrained(os.path.join(staging, "model"))
        compact = os.path.join(staging, "model.sparse.safetensors")
        compressor.export(compact)
        dense = os.path.join(staging, ".dense-size.safetensors")
        save_state_dict(model.state_dict(), dense)
        sizes = (os.path.getsize(dense), os.path.getsize(compact), directory_size(os.path.join(staging, "model")))
        os.remove(dense)
        return _write_report(staging, _report(args, config, before, after, report, sizes))


def _write_report(staging, text):
    with open(os.path.join(staging, "report.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    return text


def _token_data(args, tokenizer, texts):
    """``(calibration chunks, held-out Wikipedia chunks)``."""
    from msmodelslim import assets

    calibration = token_chunks(tokenizer, texts, args.samples, args.seq_len, args.calib)
    try:
        held_out = assets.wiki_token_chunks(tokenizer, "test", args.eval_samples, args.seq_len)
    except ValueError as exc:
        raise UsageError(f"{exc} Lower --eval-samples or --seq-len.") from None
    return calibration, held_out


def _streamable(path):
    """A Hugging Face directory of safetensors weights is sparsified one block at a time, never loaded whole."""
    from msmodelslim.utils.checkpoint import SAFETENSORS_SUFFIX, resolve_weight_path

    if path.endswith(".gguf") or not os.path.isfile(os.path.join(path, "config.json")):
        return False
    with reading("MODEL", path):
        return resolve_weight_path(path).endswith((SAFETENSORS_SUFFIX, ".safetensors.index.json"))


def _sparsify_streamed(args, config, output, texts):
    """The same job on a directory, streamed: the model is never whole in memory (the perplexities too are
    computed block by block)."""
    from transformers import AutoTokenizer

    from msmodelslim.pytorch.sparse.sparse_tools.streaming import sparsify_checkpoint, streamed_perplexity

    with reading("MODEL", args.model):
        check_causal_lm_config(args.model)
        tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=False)
    calibration, held_out = _token_data(args, tokenizer, texts)
    with reading("MODEL", args.model):
        before = streamed_perplexity(args.model, held_out)
    with output.writing() as staging:
        model_dir = os.path.join(staging, "model")
        compact = os.path.join(staging, "model.sparse.safetensors")
        batches = [{"input_ids": chunk.unsqueeze(0)} for chunk in calibration]
        report = sparsify_checkpoint(args.model, config, model_dir, batches, export=compact)
        after = streamed_perplexity(model_dir, held_out)
        dense = sum(os.path.getsize(os.path.join(model_dir, name)) for name in os.listdir(model_dir)
                    if name.endswith(".safetensors"))
        sizes = (dense, os.path.getsize(compact), directory_size(model_dir))
        return _write_report(staging, _report(args, config, before, after, report, sizes))


def _report(args, config, before, after, report, sizes):
    dense, compact, directory = sizes
    return "\n".join([
        f"# Sparse model: {os.path.basename(os.path.normpath(args.model))}", "",
        f"- configuration: `{config!r}`",
        f"- calibration: {args.samples} x {args.seq_len} tokens from `{args.calib}`",
        f"- perplexity on {args.eval_samples} x {args.seq_len} held-out Wikipedia tokens: "
        f"{before:.2f} -> {after:.2f}",
        f"- overall sparsity of the {len(report.layers)} sparsified layers: {report.overall_sparsity:.4f}",
        f"- files: dense weights {dense / 2**20:.1f} MiB, compact `model.sparse.safetensors` {compact / 2**20:.1f} MiB "
        f"({compact / dense:.1%}), Hugging Face directory `model/` {directory / 2**20:.1f} MiB",
        "- time: " + ", ".join(f"{part} {seconds:.1f} s" for part, seconds in report.timings.items()),
        "- speed: in PyTorch, unstructured and N:M zeros make the compact file smaller, not the forward pass faster "
        "(the dense kernels still multiply by every zero). For a faster model remove whole channels, heads or "
        "layers: `msmodelslim prune-transformer` (prune_model_weight) or PruneTorch.", "",
        "## Layers", "", report.table(), ""])
