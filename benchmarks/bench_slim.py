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

``--model minilm``: all-MiniLM-L6 (a sentence encoder) to 50 % of all its parameters, distilled on the unlabelled
Wikipedia text (one padded 128-token text per row, batch 16, lr 3e-4): the held-out embedding cosine to the teacher
(through the slim model's projection into the teacher's space) at each tenth of the run, and at the end the BBC
News probe (logistic regression on each model's own sentence embeddings, 400 training / 200 test articles). The
depth-only row cannot reach this budget (the token embedding alone is 52 % of the parameters); the scratch row is
the same architecture from random weights with the same distillation.

Writes benchmarks/results/slim.md and slim_perplexity.png (``--device cuda``: slim_gpu.md, slim_gpu_perplexity.png;
``--model minilm``: slim_minilm.md).
Run: python benchmarks/bench_slim.py [--quick] [--model smollm2|minilm] [--tokens N] [--rows slim,first_n,depth,scratch]
     [--device cuda [--batch-size B] [--lr LR]]
"""
import argparse
import json
import os
import shutil
import time

from common import ROOT, provenance, write_result
from msmodelslim.utils.report import format_table

WORK = ROOT / "benchmarks" / ".slim-work"
ROWS = ("slim", "first_n", "depth", "scratch")
LABELS = {"dense": "dense (teacher)", "pruned": "slim, no training", "slim": "slim + KD",
          "first_n": "first-N + KD", "depth": "depth only + KD", "scratch": "scratch (LM loss)"}
ENCODER_LABELS = dict(LABELS, scratch="scratch + KD")


def setup(quick, device="cpu", model="smollm2"):
    """``(teacher, tokenizer, directory)``: the real model, or with ``quick`` a tiny random one of its family."""
    import torch
    import transformers as T

    from msmodelslim import assets

    encoder = model == "minilm"
    path = assets.minilm_l6_dir() if encoder else assets.smollm2_135m_dir()
    loader = T.AutoModel if encoder else T.AutoModelForCausalLM
    tokenizer = T.AutoTokenizer.from_pretrained(path)
    if not quick:
        return loader.from_pretrained(path, dtype=torch.float32).eval().to(device), tokenizer, str(path)
    config = T.AutoConfig.from_pretrained(path)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 4, 128, 256
    config.num_attention_heads = 4
    if not encoder:
        config.num_key_value_heads, config.head_dim = 2, 32
    torch.manual_seed(0)
    folder = WORK / f"quick-teacher-{model}"
    loader.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return loader.from_pretrained(folder).eval().to(device), tokenizer, str(folder)


def settings(args):
    from msmodelslim.common.slim import SlimConfig

    encoder = args.model == "minilm"
    kind = "params" if encoder else "non_embedding_params"
    if args.quick:
        return SlimConfig(budget=0.5, budget_kind=kind, train_tokens=args.tokens or 512,
                          seq_len=64, batch_size=4, align=16, max_candidates=2, top_k=2, calib_samples=4,
                          eval_samples=4, checkpoint_every=5)
    if encoder:
        return SlimConfig(budget=0.5, budget_kind=kind, train_tokens=args.tokens, seq_len=128, batch_size=16,
                          learning_rate=3e-4, checkpoint_every=20, search_fraction=0.1, eval_samples=64)
    if args.device != "cpu":
        return SlimConfig(budget=0.5, budget_kind=kind, train_tokens=args.tokens, seq_len=256,
                          batch_size=args.batch_size, learning_rate=args.lr, checkpoint_every=200,
                          search_fraction=0.1)
    return SlimConfig(budget=0.5, budget_kind=kind, train_tokens=args.tokens, seq_len=256,
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
                    "latency_ratio": result.metrics["latency_ratio"], "model": result.model}


def _data(teacher, tokenizer, config):
    """``(objective, train rows, held-out rows, calibration batches, steps)``, as slim_model makes them."""
    from msmodelslim.pytorch.slim.objective import objective_for
    from msmodelslim.pytorch.slim.pipeline import _token_data

    objective = objective_for("auto", teacher)
    return (objective,) + _token_data(tokenizer, config, "wiki", objective)


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
    """The architecture with every width kept and the layer count nearest the budget, or None when even the nearest
    misses it by more than the tolerance."""
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
    if abs(size(layers) / full - config.budget) > config.tolerance:
        return None
    return Architecture(layers, dense.hidden, dense.heads, dense.kv_heads, dense.ffn)


def run_trained(row, teacher, tokenizer, path, config, arch):
    """first_n, depth (distilled) or scratch (decoders: LM loss; encoders: the same distillation from random
    weights) on the slim row's tokens and schedule."""
    import torch

    from msmodelslim.common.slim.search import Architecture
    from msmodelslim.pytorch.slim.checkpoints import Checkpoints
    from msmodelslim.pytorch.slim.pipeline import _plan
    from msmodelslim.pytorch.slim.train import Distillation

    objective, train, held_out, calibration, steps = _data(teacher, tokenizer, config)
    torch.manual_seed(config.seed)
    if row == "first_n":
        student = _student(teacher, arch, config, "first", {i: i for i in range(arch.layers)}, calibration, path)
    elif row == "depth":
        arch = _depth_only(teacher, config)
        if arch is None:
            return {"skipped": f"no layer count with every width kept is within {config.tolerance:.0%} of the budget"}
        student = _student(teacher, arch, config, "activation", "auto", calibration, path)
    else:
        student = _student(teacher, arch, config, None, None, calibration, path)
    objective.prepare(teacher, student, calibration)
    pruned = objective.metric(teacher, student.eval(), held_out)
    label = Architecture(**vars(arch)).label()
    plan = _plan(config, steps)
    if row == "scratch" and objective.name == "lm":
        plan.learning_rate = 1e-3
        return {"curve": train_scratch(student, plan, train, held_out), "pruned": pruned, "architecture": label}
    folder = WORK / row
    resume = (folder / "settings.json").is_file()
    store = Checkpoints(str(folder), {"row": row, "config": config.to_dict()}, resume)
    history = Distillation(teacher, student, objective, plan, train, held_out, checkpoint=(store, "final.pt"),
                           name=row).run(resume=resume)
    return {"curve": history.evaluations, "pruned": pruned, "architecture": label, "model": student.eval()}


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
    parser.add_argument("--model", default="smollm2", choices=("smollm2", "minilm"))
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
    teacher, tokenizer, path = setup(args.quick, args.device, args.model)
    config = settings(args)
    encoder = args.model == "minilm"
    probe = _probe(tokenizer, args.quick) if encoder else None
    found = {}
    name = f"{'minilm-' if encoder else ''}{config.train_tokens}{'' if args.device == 'cpu' else '-' + args.device}"
    results_file = WORK / (f"quick-{args.model}.json" if args.quick else f"results-{name}.json")
    if results_file.is_file():
        found = json.loads(results_file.read_text())
    for row in args.rows.split(","):
        if row in found:
            continue
        start, load_before = time.perf_counter(), os.getloadavg()[0]
        if row == "slim":
            _, found[row] = run_slim(teacher, tokenizer, path, config)
        else:
            found[row] = run_trained(row, teacher, tokenizer, path, config, _arch_of(found))
        model = found[row].pop("model", None)
        if probe and model is not None:
            found[row]["probe"] = probe(model)
        found[row]["seconds"] = time.perf_counter() - start
        found[row]["provenance"] = provenance(load_before=load_before)
        results_file.write_text(json.dumps(found, indent=1))
    _, train, _, _, steps = _data(teacher, tokenizer, config)
    found["train_rows"], found["steps"] = len(train), steps
    folder = args.results or (WORK / "quick-results" if args.quick else None)
    if encoder:
        found["dense_probe"] = probe(teacher)
        write_encoder_table(found, config, args, folder)
    else:
        write_table(found, config, args, folder)
    for row in ROWS:
        shutil.rmtree(WORK / row, ignore_errors=True)


def _probe(tokenizer, quick):
    """The BBC News probe accuracy of a model's own sentence embeddings (the transformer_prune benchmark's)."""
    import bench_transformer_prune as tp

    if quick:
        tp.PROBE = (40, 20)
    docs, labels = tp.bbc_subset()
    return lambda model: tp.bbc_probe(model, tokenizer, docs, labels)


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
    final = {row: found[row]["curve"][-1][1] for row in ROWS if "curve" in found.get(row, {})}
    rows = [[LABELS["dense"], model, slim["dense"]] + [""] * len(points) + [""]]
    for row in ROWS:
        if row not in found or "skipped" in found[row]:
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
    passes = found["steps"] * config.batch_size / found["train_rows"]
    split_tokens = found["train_rows"] * config.seq_len
    setting = (f"on the CPU, batches of {config.batch_size} x {config.seq_len} tokens" if args.device == "cpu" else
               f"on {args.device} (bf16 autocast), batches of {config.batch_size} x {config.seq_len} tokens, peak "
               f"learning rate {config.learning_rate:g} (scratch 0.001)")
    name, title = ("slim", "slim: prune to a budget, then distill") if args.device == "cpu" else (
        "slim_gpu", "slim on a GPU: prune to a budget, then distill, at larger token budgets")
    write_result(name, title, [
        ("Perplexity", f"Held-out perplexity of {model} at 50 % of its non-embedding parameters "
                       f"({slim['fraction']:.1%} reached), {config.train_tokens:,} training tokens per row "
                       f"({passes:.1f} passes over the {split_tokens:,} tokens of the train split), "
                       f"{setting}; one run per row, measured at {slim.get('provenance') or provenance()}.\n\n"
                       + format_table(headers, rows)
                       + "\n\n" + goals),
        ("Candidates", "Proxy: mean KL(teacher || student) per held-out token, before and after the short "
                       "distillation of the best three.\n\n"
                       + format_table(["architecture", "of dense", "proxy", "after short KD"], candidates)),
    ], folder=folder)


def write_encoder_table(found, config, args, folder):
    """slim_minilm.md: embedding cosine to the teacher along the run, and the BBC probe of each final model."""
    slim = found["slim"]
    steps = [step for step, _ in slim["curve"]]
    points = sorted(set([steps[round(i * (len(steps) - 1) / 5)] for i in range(6)] if len(steps) > 6 else steps))
    headers = (["row", "architecture", "no training"] + [f"{step * config.batch_size:,} texts" for step in points]
               + ["BBC probe accuracy"])
    model = "a tiny random BERT (--quick)" if args.quick else "all-MiniLM-L6"
    rows = [[LABELS["dense"], model, f"{slim['dense']:.3f}"] + [""] * len(points) + [f"{found['dense_probe']:.3f}"]]
    skipped = []
    for row in ROWS:
        if row not in found:
            continue
        if "skipped" in found[row]:
            skipped.append(f"{ENCODER_LABELS[row]}: {found[row]['skipped']}")
            continue
        curve = dict((step, value) for step, value in found[row]["curve"])
        rows.append([ENCODER_LABELS[row], found[row]["architecture"], f"{found[row]['pruned']:.3f}"]
                    + [f"{curve[step]:.3f}" if step in curve else "" for step in points]
                    + [f"{found[row]['probe']:.3f}"])
    passes = found["steps"] * config.batch_size / found["train_rows"]
    uses = (f"each of {found['train_rows']:,} texts of the Wikipedia train split once" if passes <= 1 else
            f"{passes:.1f} passes over the {found['train_rows']:,} texts of the Wikipedia train split")
    candidates = [[c["label"] + (" (chosen)" if c.get("chosen") else ""), f"{c['fraction']:.1%}", f"{c['proxy']:.4f}",
                   f"{c['proxy_after']:.4f}" if "proxy_after" in c else ""] for c in slim["candidates"]]
    write_result("slim_minilm", "slim: a sentence encoder to 50 % of its parameters, then distill", [
        ("Embedding cosine", f"Held-out embedding cosine of {model} at 50 % of all its parameters "
                             f"({slim['fraction']:.1%} reached) to the teacher, through the slim model's projection "
                             f"into the teacher's space, {found['steps'] * config.batch_size:,} training texts per "
                             f"row ({uses}, unlabelled), batches of {config.batch_size} texts of at most "
                             f"{config.seq_len} tokens, peak learning rate {config.learning_rate:g}, on the CPU; BBC "
                             f"probe: logistic regression on each final model's own mean-pooled embeddings. One run "
                             f"per row, measured at {slim.get('provenance') or provenance()}.\n\n"
                             + format_table(headers, rows)
                             + ("\n\nNot run: " + "; ".join(skipped) + "." if skipped else "")),
        ("Candidates", "Proxy: 1 - cosine of the held-out sentence embeddings to the teacher's, before and after the "
                       "short distillation of the best three.\n\n"
                       + format_table(["architecture", "of dense", "proxy", "after short KD"], candidates)),
    ], folder=folder)


if __name__ == "__main__":
    main()
