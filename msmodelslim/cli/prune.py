"""``msmodelslim prune FACTORY``: structured pruning of any PyTorch model built by a Python callable."""
import importlib
import json
import os

from msmodelslim.cli.common import UsageError, atomic_directory, existing_path, positive_ratio


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "prune", help="structured pruning of a PyTorch model (PruneTorch)",
        description="Build the model with FACTORY (package.module:callable returning an nn.Module), optionally "
                    "load weights, prune it to --ratio of its parameters, and write desc.json, the pruned "
                    "weights (model.safetensors) and summary.md.")
    parser.add_argument("factory", help="package.module:callable returning a torch.nn.Module")
    parser.add_argument("--input-shape", required=True, help="sample input shape, e.g. 1,3,224,224")
    parser.add_argument("--ratio", type=positive_ratio, required=True, help="fraction of the parameters to keep")
    parser.add_argument("--weights", help="weights to load first (.safetensors, .pt ...)")
    parser.add_argument("--importance", default="l1", choices=("l1", "l2", "bn_scale", "activation", "random"))
    parser.add_argument("--align", type=int, default=16, help="channel alignment (default 16)")
    parser.add_argument("--out", required=True, help="output directory (written only if the job succeeds)")
    parser.set_defaults(run=run)


def build(factory):
    module_name, _, attribute = factory.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"FACTORY must look like package.module:callable, got {factory!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import '{module_name}' for FACTORY: {exc}") from None
    target = getattr(module, attribute, None)
    if not callable(target):
        raise UsageError(f"'{module_name}' has no callable '{attribute}'")
    import torch

    model = target()
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"FACTORY {factory} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def run(args):
    import torch

    from msmodelslim.pytorch.prune.prune_torch import PruneTorch
    from msmodelslim.utils.checkpoint import load_state_dict, save_state_dict

    try:
        shape = [int(v) for v in args.input_shape.split(",")]
    except ValueError:
        raise UsageError(f"--input-shape must be comma-separated ints, e.g. 1,3,224,224, got {args.input_shape!r}")
    if args.weights:
        existing_path(args.weights, "--weights")
    model = build(args.factory).eval()
    if args.weights:
        model.load_state_dict(load_state_dict(args.weights))
    pruner = PruneTorch(model, torch.randn(*shape), align=args.align).set_importance_evaluation_function(
        args.importance)
    desc = pruner.prune(args.ratio)
    with atomic_directory(args.out) as staging:
        with open(os.path.join(staging, "desc.json"), "w", encoding="utf-8") as handle:
            json.dump(desc, handle)
        save_state_dict(model.state_dict(), os.path.join(staging, "model.safetensors"))
        with open(os.path.join(staging, "summary.md"), "w", encoding="utf-8") as handle:
            handle.write(f"# {args.factory} pruned to {args.ratio:.0%} of its parameters\n\n{pruner.summary()}\n")
    print(pruner.summary().splitlines()[-1])
    print(f"Written to {os.path.abspath(args.out)}")
