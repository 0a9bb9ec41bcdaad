"""``msmodelslim prune-transformer WEIGHTS``: load a big checkpoint into a smaller model of the same architecture."""
import json
import os
import re

from msmodelslim.cli.common import (UsageError, add_output_arguments, call_factory, existing_path, reading,
                                    refuse_remote_code)
from msmodelslim.cli.output import OutputDirectory
from msmodelslim.errors import CheckpointError

STEPS = ("prune_blocks", "prune_bert_intra_block", "prune_vit_intra_block")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "prune-transformer", help="prune a transformer checkpoint into a smaller model",
        description="Build the small model from a config (JSON file or Hugging Face directory) or, for MindSpore, "
                    "from a Python callable; fill it with the checkpoint's weights by prune_model_weight, and save it "
                    "(save_pretrained, or model.ckpt for MindSpore).")
    parser.add_argument("weights", help="the big checkpoint: a Hugging Face directory, .safetensors, .pt/.bin, or a "
                                        "MindSpore .ckpt")
    parser.add_argument("--small-config", help="config.json of the small PyTorch model, or its directory")
    parser.add_argument("--network", help="package.module:callable returning the small MindSpore Cell (with a .ckpt "
                                          "WEIGHTS)")
    parser.add_argument("--steps", default="prune_blocks,prune_bert_intra_block",
                        help="comma-separated steps (default prune_blocks,prune_bert_intra_block)")
    parser.add_argument("--layer-map", help="small:checkpoint layer pairs, e.g. 0:0,1:2,2:5, or 'auto' (the layers of "
                                            "highest block influence on calibration text) for prune_blocks")
    parser.add_argument("--pattern", help="regex with one group capturing the layer id (default: from the model)")
    parser.add_argument("--importance", default="first", choices=("first", "weight", "activation"))
    parser.add_argument("--calib-samples", type=int, default=32,
                        help="calibration texts for activation importance and --layer-map auto")
    add_output_arguments(parser, required=True)
    parser.set_defaults(run=run)


def parse_layer_map(text):
    """``"0:0,1:2"`` -> ``{0: 0, 1: 2}``; ``"auto"`` stays ``"auto"``.

    Raises:
        UsageError: a pair is malformed, or a small-model layer is given twice.
    """
    if text.strip() == "auto":
        return "auto"
    mapping = {}
    for pair in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", pair)
        if match is None:
            raise UsageError(f"--layer-map must look like 0:0,1:2,2:5 (small:checkpoint), got {text!r}")
        small, big = int(match[1]), int(match[2])
        if small in mapping:
            raise UsageError(f"--layer-map gives small-model layer {small} twice ({small}:{mapping[small]} and "
                             f"{pair.strip()}) in {text!r}")
        mapping[small] = big
    return mapping


def _check_pattern(pattern):
    try:
        groups = re.compile(pattern).groups
    except re.error as exc:
        raise UsageError(f"--pattern {pattern!r} is not a valid regular expression: {exc}") from None
    if groups != 1:
        raise UsageError(f"--pattern {pattern!r} must have exactly one group capturing the layer id, it has "
                         f"{groups}")


def _check_small_layers(layer_map, pattern, names):
    """Every small-model layer of ``--layer-map`` must exist in the small model (``names``: its parameter names)."""
    present = {int(m[1]) for name in names for m in [re.match(pattern, name)] if m}
    unknown = sorted(set(layer_map) - present)
    if present and unknown:  # nothing matched: the pattern names checkpoint keys only, the loader will tell
        raise UsageError(f"--layer-map names small-model layer(s) {unknown}, but the small model has layers "
                         f"{sorted(present)}")


def _small_model(config_path):
    import transformers

    existing_path(config_path, "--small-config")
    refuse_remote_code("--small-config", config_path)
    try:
        config = transformers.AutoConfig.from_pretrained(config_path, trust_remote_code=False)
    except Exception as exc:  # transformers raises many types for a bad config (OSError, strict-dataclass errors)
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UsageError(f"--small-config '{config_path}' is not a usable Hugging Face config: {first_line}") from None
    architecture = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, architecture, None) if architecture else None
    with reading("--small-config", config_path):
        return (cls(config) if cls is not None else transformers.AutoModel.from_config(config)).eval()


def _check_big_layers(layer_map, pattern, weights):
    """Every checkpoint layer of ``--layer-map`` must exist in WEIGHTS (checked on its keys, nothing is read)."""
    from msmodelslim.utils.checkpoint import open_checkpoint

    with reading("WEIGHTS", weights), open_checkpoint(weights) as checkpoint:
        keys = checkpoint.keys()
    present = {int(m[1]) for key in keys for m in [re.match(pattern, key)] if m}
    unknown = sorted(set(layer_map.values()) - present)
    if present and unknown:
        raise UsageError(f"--layer-map names checkpoint layer(s) {unknown}, but WEIGHTS has layers "
                         f"{sorted(present)}")


def _layer_pattern(model):
    from msmodelslim.pytorch.prune.structure import layer_pattern

    pattern = layer_pattern(model)
    if pattern is None:
        raise UsageError("cannot tell where the layers are in this model: give --pattern")
    return pattern


def run(args):
    """Check everything the command line says, then build the small model, fill it and write ``--out``."""
    existing_path(args.weights, "WEIGHTS")
    if args.calib_samples < 1:
        raise UsageError(f"--calib-samples must be a positive number of texts, got {args.calib_samples}")
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise UsageError(f"--steps must be a comma-separated list of {', '.join(STEPS)}, got {args.steps!r}")
    if "prune_blocks" in steps and not args.layer_map:
        raise UsageError("--steps prune_blocks needs --layer-map")
    layer_map = parse_layer_map(args.layer_map) if args.layer_map else None
    if args.pattern is not None:
        _check_pattern(args.pattern)
    mindspore = _check_model_source(args)
    with OutputDirectory(args.out, (args.weights, args.small_config), args.overwrite, "prune-transformer") as output:
        if mindspore:
            _prune_mindspore(args, steps, layer_map, output)
        else:
            _prune(args, steps, layer_map, output)


def _check_model_source(args):
    """True for the MindSpore path (``--network``), False for PyTorch (``--small-config``)."""
    if bool(args.small_config) == bool(args.network):
        raise UsageError("give the small model either as --small-config (PyTorch) or as --network (MindSpore)")
    if args.weights.endswith(".ckpt") and not args.network:
        raise UsageError(f"WEIGHTS '{args.weights}' is a MindSpore checkpoint: give the small Cell with --network "
                         f"package.module:callable")
    if args.network and (args.importance == "activation" or args.layer_map == "auto"):
        raise UsageError("--importance activation and --layer-map auto need calibration text, which the command "
                         "line prepares for Hugging Face models only; use the Python API for MindSpore")
    return bool(args.network)


def pattern_from_names(names):
    """``prefix(\\d+)\\.`` for the parameter-name prefix followed by the most distinct layer numbers, or None."""
    ids = {}
    for name in names:
        match = re.match(r"(.*?\.)(\d+)\.", name)
        if match:
            ids.setdefault(match[1], set()).add(match[2])
    if not ids:
        return None
    prefix = max(sorted(ids), key=lambda p: len(ids[p]))
    return re.escape(prefix) + r"(\d+)\."


def _prune_mindspore(args, steps, layer_map, output):
    import mindspore

    from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight

    cell = call_factory(args.network, "--network")
    if not isinstance(cell, mindspore.nn.Cell):
        raise UsageError(f"--network {args.network} returned a {type(cell).__name__}, not a mindspore.nn.Cell")
    names = list(cell.parameters_dict())
    config = PruneConfig().set_steps(steps)
    if layer_map is not None:
        pattern = args.pattern or pattern_from_names(names)
        if pattern is None:
            raise UsageError("cannot tell where the layers are in this Cell: give --pattern")
        _check_small_layers(layer_map, pattern, names)
        config.add_blocks_params(pattern, layer_map)
    config.set_importance(args.importance)
    try:
        prune_model_weight(cell, config, os.path.abspath(args.weights))
    except CheckpointError as exc:
        raise UsageError(f"WEIGHTS: {exc.message}") from exc
    with output.writing() as staging:
        mindspore.save_checkpoint(cell, os.path.join(staging, "model.ckpt"))
        with open(os.path.join(staging, "prune_report.json"), "w", encoding="utf-8") as handle:
            json.dump({"steps": steps, "importance": args.importance, "kept": config.report}, handle, indent=1)
    params = sum(int(p.size) for p in cell.get_parameters())
    print(f"{type(cell).__name__} with {params:,} parameters filled from {args.weights} ({args.importance} "
          f"importance); written to {os.path.join(os.path.abspath(args.out), 'model.ckpt')}")


def _prune(args, steps, layer_map, output):
    from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight

    model = _small_model(args.small_config)
    config = PruneConfig().set_steps(steps)
    if layer_map is not None:
        pattern = args.pattern or _layer_pattern(model)
        if layer_map != "auto":
            _check_small_layers(layer_map, pattern, [name for name, _ in model.named_parameters()])
            _check_big_layers(layer_map, pattern, args.weights)
        config.add_blocks_params(pattern, layer_map)
    tokenizer = _tokenizer(args.weights)
    dataset = None
    if args.importance == "activation" or layer_map == "auto":
        if tokenizer is None:
            raise UsageError("--importance activation and --layer-map auto need WEIGHTS to be a Hugging Face "
                             "directory with a tokenizer")
        from msmodelslim import assets

        texts = assets.wiki_split()[0][: args.calib_samples]
        dataset = [dict(tokenizer(texts[i:i + 8], padding=True, truncation=True, max_length=128,
                                  return_tensors="pt")) for i in range(0, len(texts), 8)]
    config.set_importance(args.importance, dataset)
    try:
        prune_model_weight(model, config, os.path.abspath(args.weights))
    except CheckpointError as exc:
        raise UsageError(f"WEIGHTS: {exc.message}") from exc
    with output.writing() as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        with open(os.path.join(staging, "prune_report.json"), "w", encoding="utf-8") as handle:
            json.dump({"steps": steps, "importance": args.importance, "kept": config.report}, handle, indent=1)
    params = sum(p.numel() for p in model.parameters())
    print(f"{type(model).__name__} with {params:,} parameters filled from {args.weights} "
          f"({args.importance} importance); written to {os.path.abspath(args.out)}")


def _tokenizer(weights):
    if not os.path.isdir(weights):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(weights, trust_remote_code=False)
    except (OSError, ValueError):
        return None
