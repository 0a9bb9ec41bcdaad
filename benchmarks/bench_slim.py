"""slim benchmark: SmolLM2-135M to 50 % of its non-embedding parameters, then distillation, against the same
architecture filled with the original's first-N slices, a depth-only architecture of the same budget, and the same
architecture trained from scratch on the same tokens.

Protocol: training text = the Wikipedia train split (packed 256-token chunks, batch 8); held-out perplexity on
16 x 256 tokens of the test split (never trained on). Every trained row gets the same tokens, optimizer and
schedule (AdamW, lr 1e-4 with warm-up and cosine decay; scratch: lr 1e-3, its own loss). Perplexity is read at
each tenth of the run, so a row's curve is one schedule of the largest token budget, not separate runs.
Rows are resumable: each keeps its checkpoints in benchmarks/.slim-work/<row>/ until the table is written.

On a GPU (``--device cuda``) the teacher and every student live on the GPU, training runs under bf16 autocast, and
the larger token budgets the CPU cannot reach are affordable; batches and peak learning rate are then flags of
their own (default 32 rows, 3e-4), the rest of the protocol is unchanged.

Writes benchmarks/results/slim.md and slim_perplexity.png (``--device cuda``: slim_gpu.md, slim_gpu_perplexity.png).
Run: python benchmarks/bench_slim.py [--quick] [--tokens N] [--rows slim,first_n,depth,scratch] [--device cuda
     [--batch-size B] [--lr LR]]
"""
import argparse
import json
import math
import os
import shutil
import time

from common import ROOT, provenance, write_result
from msmodelslim.utils.report import format_table

WORK = ROOT / "benchmarks" / ".slim-work"
ROWS = ("slim", "first_n", "depth", "scratch")
LABELS = {"dense": "dense (teacher)", "pruned": "slim, no training", "slim": "slim + KD",
          "first_n": "first-N + KD", "depth": "depth only + KD", "scratch": "scratch (LM loss)"}


def setup(quick, device="cpu"):
    import torch
    import transformers as T

    from msmodelslim import assets

    path = assets.smollm2_135m_dir()
    tokenizer = T.AutoTokenizer.from_pretrained(path)
    if not quick:
        teacher = T.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval().to(device)
        return teacher, tokenizer, str(path)
    config = T.AutoConfig.from_pretrained(path)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 4, 128, 256
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 4, 2, 32
    torch.manual_seed(0)
    folder = WORK / "quick-teacher"
    T.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return T.AutoModelForCausalLM.from_pretrained(folder).eval().to(device), tokenizer, str(folder)


def settings(args):
    from msmodelslim.common.slim import SlimConfig

    if args.quick:
        return SlimConfig(budget=0.5, budget_kind="non_embedding_params", train_tokens=args.tokens or 512,
                          seq_len=64, batch_size=4, align=16, max_candidates=2, top_k=2, calib_samples=4,
                          eval_samples=4, checkpoint_every=5)
    if args.device != "cpu":
        return SlimConfig(budget=0.5, budget_kind="non_embedding_params", train_tokens=args.tokens, seq_len=256,
                          batch_size=args.batch_size, learning_rate=args.lr, checkpoint_every=200,
                          search_fraction=0.1)
    return SlimConfig(budget=0.5, budget_kind="non_embedding_params", train_tokens=args.tokens, seq_len=256,
                      batch_size=8, checkpoint_every=5, search_fraction=0.1)


def run_slim(teacher, tokenizer, path, config):
    from msmodelslim.common.slim import slim_model

    folder = WORK / "slim"
    resume = (folder / "settings.json").is_file()
    on_cpu = next(teacher.parameters()).device.type == "cpu"
    # a directory loads the teacher on the CPU: elsewhere the teacher already in place is given
    model, given_tokenizer = (path, None) if on_cpu else (teacher, tokenizer)
    result = slim_model(model, config, data="wiki", tokenizer=given_tokenizer, checkpoint_dir=str(folder),
                        resume=resume)
    return result, {"curve": result.history["evaluations"], "pruned": result.metrics["pruned"],
                    "dense": result.metrics["dense"], "architecture": result.architecture.label(),
                    "candidates": result.candidates, "fraction": result.metrics["fraction"],
                    "latency_ratio": result.metrics["latency_ratio"]}


def _data(tokenizer, config):
    from msmodelslim.pytorch.slim import data as slim_data

    train_texts, held_texts = slim_data.split_texts("wiki")
    steps = max(1, math.ceil(config.train_tokens / (config.batch_size * config.seq_len)))
    train = slim_data.packed_rows(tokenizer, train_texts, config.seq_len, steps * config.batch_size, "train")
    held_out = slim_data.packed_rows(tokenizer, held_texts, config.seq_len, config.eval_samples, "test")
    return train, held_out, steps


def _student(teacher, arch, config, importance, layer_map, calibration, path):
    from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
    from msmodelslim.pytorch.prune.structure import layer_pattern
    from msmodelslim.pytorch.slim import families

    family = families.family_of(teacher)
    space = families.search_space(family, teacher.config, prune_hidden=True)
    student = families.build(type(teacher), families.candidate_config(family, teacher.config, space, arch),
                             next(teacher.parameters()).device)
    if importance is None:
        return student
    prune = PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"]).add_blocks_params(
        layer_pattern(teacher), layer_map)
    if importance != "first":
        prune.set_importance(importance, dataset=calibration, model=teacher)
    prune_model_weight(student, prune, path)
    return student


def _depth_only(teacher, config):
    """The architecture with every width kept and the layer count nearest the budget."""
    from msmodelslim.common.slim.search import Architecture
    from msmodelslim.pytorch.slim import families

    family = families.family_of(teacher)
    space = families.search_space(family, teacher.config, prune_hidden=True)
    dense = space.dense
    size = lambda layers: families.model_size(families.build(  # noqa: E731
        type(teacher), families.candidate_config(family, teacher.config, space, Architecture(
            layers, dense.hidden, dense.heads, dense.kv_heads, dense.ffn)), "meta"), config.budget_kind)
    full = size(dense.layers)
    layers = min(range(1, dense.layers + 1), key=lambda n: abs(size(n) / full - config.budget))
    return Architecture(layers, dense.hidden, dense.heads, dense.kv_heads, dense.ffn)


def run_trained(row, teacher, tokenizer, path, config, arch):
    """first_n, depth (distilled) or scratch (LM loss) on the slim row's tokens and schedule."""
    import torch

    from msmodelslim.common.slim.search import Architecture
    from msmodelslim.pytorch.slim.objective import LmObjective
    from msmodelslim.pytorch.slim.checkpoints import Checkpoints
    from msmodelslim.pytorch.slim.pipeline import _plan
    from msmodelslim.pytorch.slim.train import Distillation

    train, held_out, steps = _data(tokenizer, config)
    calibration = [train.select(range(i, min(i + 4, config.calib_samples))) for i in range(0, config.calib_samples, 4)]
    torch.manual_seed(config.seed)
    if row == "first_n":
        student = _student(teacher, arch, config, "first", {i: i for i in range(arch.layers)}, calibration, path)
    elif row == "depth":
        arch = _depth_only(teacher, config)
        student = _student(teacher, arch, config, "activation", "auto", calibration, path)
    else:
        student = _student(teacher, arch, config, None, None, calibration, path)
    objective = LmObjective()
    pruned = objective.metric(teacher, student.eval(), held_out)
    label = Architecture(**vars(arch)).label()
    plan = _plan(config, steps)
    if row == "scratch":
        plan.learning_rate = 1e-3
        return {"curve": train_scratch(student, plan, train, held_out), "pruned": pruned, "architecture": label}
    folder = WORK / row
    resume = (folder / "settings.json").is_file()
    store = Checkpoints(str(folder), {"row": row, "config": config.to_dict()}, resume)
    history = Distillation(teacher, student, objective, plan, train, held_out, checkpoint=(store, "final.pt"),
                           name=row).run(resume=resume)
    return {"curve": history.evaluations, "pruned": pruned, "architecture": label}


def train_scratch(student, plan, train, held_out):
    """The LM loss of the student alone, with the distillation's batches, optimizer and schedule (no checkpoints:
    the cheapest row)."""
    import torch

    from msmodelslim.pytorch.slim.data import batch_at
    from msmodelslim.pytorch.slim.objective import LmObjective
    from msmodelslim.pytorch.slim.train import schedule

    optimizer = torch.optim.AdamW(student.parameters(), lr=plan.learning_rate, weight_decay=plan.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(plan))
    device = next(student.parameters()).device
    curve = []
    for step in range(plan.steps):
        student.train()
        ids = batch_at(train, step, plan.batch_size, plan.seed)["input_ids"].to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = student(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), plan.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % plan.eval_every == 0 or step + 1 == plan.steps:
            curve.append([step + 1, LmObjective().metric(None, student.eval(), held_out)])
    return curve


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny random teacher and a few steps")
    parser.add_argument("--tokens", type=int, default=50_000, help="training tokens per row (default 50000)")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch-size", type=int, default=32, help="rows of 256 tokens per step off the CPU")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of the distilled rows off the CPU")
    parser.add_argument("--results", default=None, help="folder for the results (default benchmarks/results; "
                                                        "with --quick benchmarks/.slim-work/quick-results)")
    args = parser.parse_args()
    if args.quick:
        args.tokens = None
    from msmodelslim import set_logger_level

    set_logger_level("warning")
    WORK.mkdir(parents=True, exist_ok=True)
    teacher, tokenizer, path = setup(args.quick, args.device)
    config = settings(args)
    found = {}
    suffix = "" if args.device == "cpu" else f"-{args.device}"
    results_file = WORK / ("quick.json" if args.quick else f"results-{config.train_tokens}{suffix}.json")
    if results_file.is_file():
        found = json.loads(results_file.read_text())
    for row in args.rows.split(","):
        if row in found:
            continue
        start, load_before = time.perf_counter(), os.getloadavg()[0]
        if row == "slim":
            _, found[row] = run_slim(teacher, tokenizer, path, config)
        else:
            arch = _arch_of(found)
            found[row] = run_trained(row, teacher, tokenizer, path, config, arch)
        found[row]["seconds"] = time.perf_counter() - start
        found[row]["provenance"] = provenance(load_before=load_before)
        results_file.write_text(json.dumps(found, indent=1))
    found["train_split_tokens"] = len(_data(tokenizer, config)[0]) * config.seq_len
    write_table(found, config, args, args.results or (WORK / "quick-results" if args.quick else None))
    for row in ROWS:
        shutil.rmtree(WORK / row, ignore_errors=True)


def _arch_of(found):
    from msmodelslim.common.slim.search import Architecture

    chosen = next(row for row in found["slim"]["candidates"] if row.get("chosen"))
    return Architecture(**chosen["architecture"])


def write_table(found, config, args, folder):
    slim = found["slim"]
    steps = [step for step, _ in slim["curve"]]
    points = [steps[round(i * (len(steps) - 1) / 5)] for i in range(6)] if len(steps) > 6 else steps
    points = sorted(set(points))
    tokens_per_step = config.batch_size * config.seq_len
    headers = (["row", "architecture", "no training"] + [f"{step * tokens_per_step:,} tokens" for step in points]
               + ["last / slim + KD"])
    model = "a tiny random Llama (--quick)" if args.quick else "SmolLM2-135M"
    final = {row: found[row]["curve"][-1][1] for row in ROWS if row in found}
    rows = [[LABELS["dense"], model, slim["dense"]] + [""] * len(points) + [""]]
    for row in ROWS:
        if row not in found:
            continue
        curve = dict((step, value) for step, value in found[row]["curve"])
        rows.append([LABELS[row], found[row]["architecture"], found[row]["pruned"]]
                    + [curve.get(step, "") for step in points] + [f"{final[row] / final['slim']:.2f}x"])
    goals = (f"At {config.train_tokens:,} tokens: slim + KD is {final['slim'] / slim['dense']:.2f}x the dense "
             f"perplexity (goal at the largest budget: <= 2x)")
    goals += "".join(f"; {LABELS[row]} {final[row] / final['slim']:.2f}x slim + KD" for row in ROWS[1:]
                     if row in final) + "."
    candidates = [[c["label"] + (" (chosen)" if c.get("chosen") else ""), f"{c['fraction']:.1%}", c["proxy"],
                   c.get("proxy_after", "")] for c in slim["candidates"]]
    passes = config.train_tokens / found["train_split_tokens"]
    setting = (f"on the CPU, batches of {config.batch_size} x {config.seq_len} tokens" if args.device == "cpu" else
               f"on {args.device} (bf16 autocast), batches of {config.batch_size} x {config.seq_len} tokens, peak "
               f"learning rate {config.learning_rate:g} (scratch 0.001)")
    name, title = ("slim", "slim: prune to a budget, then distill") if args.device == "cpu" else (
        "slim_gpu", "slim on a GPU: prune to a budget, then distill, at larger token budgets")
    write_result(name, title, [
        ("Perplexity", f"Held-out perplexity of {model} at 50 % of its non-embedding parameters "
                       f"({slim['fraction']:.1%} reached), {config.train_tokens:,} training tokens per row "
                       f"({passes:.1f} passes over the {found['train_split_tokens']:,} tokens of the train split), "
                       f"{setting}; one run per row, measured at {slim.get('provenance') or provenance()}.\n\n"
                       + format_table(headers, rows)
                       + "\n\n" + goals),
        ("Candidates", "Proxy: mean KL(teacher || student) per held-out token, before and after the short "
                       "distillation of the best three.\n\n"
                       + format_table(["architecture", "of dense", "proxy", "after short KD"], candidates)),
    ], folder=folder)


if __name__ == "__main__":
    main()
