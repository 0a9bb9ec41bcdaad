"""``msmodelslim slim MODEL --budget B --out DIR``: a smaller trained model of the same architecture in one call
(architecture search under the budget, importance pruning, distillation from MODEL)."""
import os

from msmodelslim.cli.common import (UsageError, add_output_arguments, calibration_texts, existing_path, positive_ratio,
                                    reading, refuse_remote_code)
from msmodelslim.cli.output import OutputDirectory, check_output

CHECKPOINTS = "checkpoints"
OPTIONS = {"learning_rate": "--lr"}  # SlimConfig fields whose option is not their name


def add_parser(subparsers):
    from msmodelslim.common.slim.config import BUDGET_KINDS

    parser = subparsers.add_parser(
        "slim", help="prune a transformer to a budget and distill it back",
        description="Search the architecture (layers, heads, hidden size, FFN width) that meets the budget, fill it "
                    "with MODEL's most important weights, distill it from MODEL, and write DIR/model "
                    "(from_pretrained), DIR/report.md and DIR/metrics.json. Checkpoints live in DIR/checkpoints until the run "
                    "completes; --resume continues an interrupted run exactly.")
    parser.add_argument("model", help="a Hugging Face model directory or a .gguf file")
    parser.add_argument("--budget", type=positive_ratio, required=True,
                        help="fraction of the dense model's size to keep, e.g. 0.5")
    parser.add_argument("--budget-kind", default="params", choices=BUDGET_KINDS,
                        help="what the budget counts (default params)")
    parser.add_argument("--data", default="wiki",
                        help="'wiki', a .txt file or a .jsonl file (default wiki); for a sequence classifier, "
                             "jsonl records with an integer 'label' add the labels' cross-entropy")
    parser.add_argument("--label-weight", type=float, default=0.5,
                        help="weight of the labels' cross-entropy beside the distillation (default 0.5)")
    parser.add_argument("--hidden-weight", type=float, default=0.0,
                        help="weight of the hidden-state losses, each student layer against the teacher layer it "
                             "came from (default 0: none)")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="how far from the budget a candidate may be, as a fraction of the dense size "
                             "(default 0.02; widen it for a latency budget on a busy machine)")
    parser.add_argument("--train-tokens", type=int, default=200_000, help="distillation tokens (default 200000)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    parser.add_argument("--micro-batch-size", type=int, default=0, help="gradient accumulation chunk (default: none)")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    parser.add_argument("--top-k", type=int, default=3, help="candidates given a short distillation (default 3)")
    parser.add_argument("--max-candidates", type=int, default=12, help="architectures scored (default 12)")
    parser.add_argument("--align", type=int, default=64, help="widths are multiples of this (default 64)")
    parser.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run whose checkpoints are "
                                                              "in DIR/checkpoints")
    add_output_arguments(parser, required=True)
    parser.set_defaults(run=run)


def _config(args):
    from msmodelslim.common.slim import SlimConfig

    try:
        return SlimConfig(budget=args.budget, budget_kind=args.budget_kind, train_tokens=args.train_tokens,
                          seq_len=args.seq_len, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                          learning_rate=args.lr, top_k=args.top_k, max_candidates=args.max_candidates,
                          align=args.align, checkpoint_every=args.checkpoint_every, seed=args.seed,
                          label_weight=args.label_weight, hidden_weight=args.hidden_weight,
                          tolerance=args.tolerance).validate()
    except (ValueError, TypeError) as exc:
        field, _, rest = str(exc).partition(" ")
        name = field.replace("SlimConfig.", "")
        option = OPTIONS.get(name, "--" + name.replace("_", "-"))
        raise UsageError(f"{option} {rest}") from None


def run(args):
    """Check everything the command line says, then slim MODEL and write ``--out``."""
    config = _config(args)
    existing_path(args.model, "MODEL")
    if not args.model.endswith(".gguf"):
        if not os.path.isfile(os.path.join(args.model, "config.json")):
            raise UsageError(f"MODEL must be a Hugging Face directory (with config.json) or a .gguf file, got "
                             f"'{args.model}'")
        refuse_remote_code("MODEL", args.model)
        from transformers import AutoConfig

        with reading("MODEL", args.model):
            AutoConfig.from_pretrained(args.model, trust_remote_code=False)
    data = "wiki" if args.data == "wiki" else calibration_texts(args.data, "--data", keep_labels=True)
    if data != "wiki" and not any((text["text"] if isinstance(text, dict) else text).strip() for text in data):
        raise UsageError(f"--data '{args.data}' holds no text")
    inputs = (args.model, None if args.data == "wiki" else args.data)
    if _torchrun_rank() > 0:
        # under torchrun, rank 0 checks, locks and writes --out; the other processes train beside it and read the
        # checkpoints it writes (so every process must see the same --out: one machine, or a shared filesystem)
        target = check_output(args.out, inputs, args.overwrite, CHECKPOINTS)
        _slim(args, config, data, os.path.join(target, CHECKPOINTS))
        return
    with OutputDirectory(args.out, inputs, args.overwrite, "slim", work_subdir=CHECKPOINTS) as output:
        try:
            result = _slim(args, config, data, output.work_dir)
        except KeyboardInterrupt as exc:
            if os.path.isdir(output.work_dir) and os.listdir(output.work_dir):
                exc.resume_hint = f"checkpoints kept in {output.work_dir}: add --resume to continue"
            raise
        with output.writing() as staging:
            result.save(staging)
    _print_summary(result, args.out)


def _torchrun_rank():
    """This process's rank when ``torchrun`` started several, else 0."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    return int(os.environ.get("RANK", "0"))


def _slim(args, config, data, checkpoint_dir):
    from msmodelslim.common.slim import slim_model

    model, tokenizer = args.model, None
    if args.model.endswith(".gguf"):
        from msmodelslim.cli.common import load_causal_lm

        model, tokenizer = load_causal_lm(args.model)
    return slim_model(model, config, data=data, tokenizer=tokenizer, checkpoint_dir=checkpoint_dir,
                      resume=args.resume)


def _print_summary(result, out):
    metrics = result.metrics
    print(f"{result.architecture.label()}: {metrics['fraction']:.1%} of the dense {metrics['budget_kind']}; "
          f"{metrics['metric']} dense {metrics['dense']:.4g}, pruned {metrics['pruned']:.4g}, distilled "
          f"{metrics['distilled']:.4g}")
    print(f"Written to {os.path.abspath(out)}")
