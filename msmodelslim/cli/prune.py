"""``msmodelslim prune FACTORY``: structured pruning of any PyTorch model built by a Python callable."""
import json
import os

from msmodelslim.cli.common import (UsageError, add_output_arguments, call_factory, existing_path, positive_ratio,
                                    reading)
from msmodelslim.cli.output import OutputDirectory


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "prune", help="structured pruning of a PyTorch model (PruneTorch)",
        description="Build the model with FACTORY (package.module:callable returning an nn.Module), optionally "
                    "load weights, prune it to --ratio of its parameters, and write desc.json, the pruned "
                    "weights (model.safetensors) and summary.md.")
    parser.add_argument("factory", help="package.module:callable returning a torch.nn.Module (the current "
                                        "directory is searched first, as with python -m)")
    parser.add_argument("--input-shape", required=True, help="sample input shape, e.g. 1,3,224,224")
    parser.add_argument("--ratio", type=positive_ratio, required=True,
                        help="fraction of the budget to keep (of the parameters by default)")
    parser.add_argument("--budget", default="params", choices=("params", "macs", "latency"),
                        help="what --ratio is a fraction of: parameters (default), multiply-accumulates on the "
                             "sample input, or the measured latency of one forward pass")
    parser.add_argument("--weights", help="weights to load first (.safetensors, .pt ...)")
    parser.add_argument("--importance", default="l1", choices=("l1", "l2", "bn_scale", "activation", "random"))
    parser.add_argument("--align", type=int, default=None,
                        help="channel alignment (default 16, fewer in layers narrower than 128 channels)")
    add_output_arguments(parser, required=True)
    parser.set_defaults(run=run)


def build(factory):
    """The torch model that FACTORY (``package.module:callable``) returns.

    Raises:
        UsageError: see :func:`msmodelslim.cli.common.call_factory`, or the result is not a torch Module.
    """
    import torch

    model = call_factory(factory, "FACTORY")
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"FACTORY {factory} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def parse_input_shape(text):
    """``"1,3,224,224"`` -> ``[1, 3, 224, 224]``.

    Raises:
        UsageError: not comma-separated ints, or a negative size.
    """
    try:
        shape = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--input-shape must be comma-separated ints, e.g. 1,3,224,224, got {text!r}") from None
    if any(size < 0 or size >= 2**31 for size in shape):
        raise UsageError(f"--input-shape sizes must be between 0 and 2**31 - 1, got {text!r}")
    return shape


def _load_weights(model, path):
    """Load ``--weights`` into ``model``; a file that does not fit the model is a UsageError naming the keys."""
    from msmodelslim.utils.checkpoint import load_state_dict

    with reading("--weights", path):
        state = load_state_dict(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    problems = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
    if problems:
        raise UsageError(f"--weights '{path}' does not fit the model built by FACTORY ({'; '.join(problems)})")
    model.load_state_dict(state)


def _check_sample(model, sample, args):
    import torch

    if sample.numel() == 0 and args.importance == "activation":
        raise UsageError(f"--importance activation needs a non-empty sample input, got --input-shape "
                         f"{args.input_shape}")
    try:
        with torch.no_grad():
            model(sample)
    except Exception as exc:  # the user's model rejects this shape: a mistake in --input-shape
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UsageError(f"the model fails on a random input of --input-shape {args.input_shape}: "
                         f"{first_line}") from exc


def run(args):
    """Check everything the command line says, then build, prune and write ``--out``."""
    shape = parse_input_shape(args.input_shape)
    if args.weights:
        existing_path(args.weights, "--weights")
    with OutputDirectory(args.out, (args.weights,), args.overwrite, "prune") as output:
        _prune(args, shape, output)


def _prune(args, shape, output):
    import torch

    from msmodelslim.pytorch.prune.prune_torch import PruneTorch
    from msmodelslim.utils.checkpoint import save_state_dict

    model = build(args.factory).eval()
    if args.weights:
        _load_weights(model, args.weights)
    try:
        sample = torch.randn(*shape)
    except (RuntimeError, OverflowError, TypeError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(f"--input-shape {args.input_shape} cannot be allocated: {first_line}") from None
    _check_sample(model, sample, args)
    pruner = PruneTorch(model, sample, align=args.align).set_importance_evaluation_function(args.importance)
    desc = pruner.prune(args.ratio, budget=args.budget)
    with output.writing() as staging:
        with open(os.path.join(staging, "desc.json"), "w", encoding="utf-8") as handle:
            json.dump(desc, handle)
        save_state_dict(model.state_dict(), os.path.join(staging, "model.safetensors"))
        with open(os.path.join(staging, "summary.md"), "w", encoding="utf-8") as handle:
            handle.write(f"# {args.factory} pruned to {args.ratio:.0%} of its parameters\n\n{pruner.summary()}\n")
    print(pruner.summary().splitlines()[-1])
    print(f"Written to {os.path.abspath(args.out)}")
