"""``msmodelslim demo``: the four capabilities on real pretrained models, with a report and plots.

1. EfficientNet-Lite0 (ImageNet) pruned with PruneTorch: parameters, MACs, CPU latency, top-1 agreement;
2. SmolLM2-135M sparsified at 50 % with SparseGPT: perplexity per method, compact file size;
3. all-MiniLM-L6 pruned into 3 layers with prune_model_weight, then distilled on BBC News.
"""
import copy
import os
import time

from msmodelslim.cli.common import add_output_arguments
from msmodelslim.cli.output import OutputDirectory

DEFAULT_OUT = "msmodelslim-demo"


def add_parser(subparsers):
    parser = subparsers.add_parser("demo", help="run the end-to-end demo on real pretrained models",
                                   description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced version (under 2 minutes)")
    add_output_arguments(parser, f"report directory (default ./{DEFAULT_OUT})", default=DEFAULT_OUT)
    parser.set_defaults(run=run)


def _say(text):
    print(f"\n== {text}", flush=True)


def _latency(model, inputs, repeats):
    import torch

    with torch.inference_mode():
        model(inputs)
        start = time.perf_counter()
        for _ in range(repeats):
            model(inputs)
    return (time.perf_counter() - start) / repeats


def prune_efficientnet(quick):
    import torch

    from msmodelslim import assets
    from msmodelslim.pytorch.prune.measure import count_params, profile
    from msmodelslim.pytorch.prune.prune_torch import PruneTorch

    _say("1/3 EfficientNet-Lite0: structured pruning to 60 % of its measured CPU latency (PruneTorch, activation "
         "importance)")
    photos = assets.sample_images(crops_per_image=4 if quick else 8)
    batch = torch.randn(1 if quick else 8, 3, 224, 224)
    repeats = 2 if quick else 10
    dense = assets.efficientnet_lite0()
    pruned = copy.deepcopy(dense)
    PruneTorch(pruned, photos[:1]).set_importance_evaluation_function("activation").prune(0.6, budget="latency")
    with torch.no_grad():
        agreement = (pruned(photos).argmax(1) == dense(photos).argmax(1)).float().mean().item()
    rows = {}
    for label, model in (("dense", dense), ("pruned", pruned)):
        macs = sum(profile(model, lambda m: m(batch[:1]))[2].values())
        rows[label] = {"params": count_params(model), "macs": macs,
                       "latency_ms": _latency(model, batch, repeats) * 1000}
    rows["agreement"] = agreement
    rows["batch"] = len(batch)
    return rows


def sparsify_smollm(quick, staging):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from msmodelslim import assets
    from msmodelslim.pytorch.sparse.sparse_tools import Compressor, SparseConfig
    from msmodelslim.utils.checkpoint import save_state_dict
    from msmodelslim.pytorch.utils.evaluation import perplexity

    _say("2/3 SmolLM2-135M: 50 % unstructured sparsity (SparseGPT), against plain magnitude")
    path = assets.smollm2_135m_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    samples, seq_len, eval_samples = (2, 128, 2) if quick else (16, 256, 8)
    calibration = [{"input_ids": c.unsqueeze(0)}
                   for c in assets.wiki_token_chunks(tokenizer, "train", samples, seq_len)]
    held_out = assets.wiki_token_chunks(tokenizer, "test", eval_samples, seq_len)
    methods = ("weight_magnitude", "hessian")
    results = {"perplexity": {}, "calibration": f"{samples} x {seq_len}", "held_out": f"{eval_samples} x {seq_len}"}
    for method in ("dense",) + methods:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        if method != "dense":
            compressor = Compressor(model, SparseConfig(method=method, sparse_ratio=0.5))
            compressor.compress(calibration)
        results["perplexity"][method] = perplexity(model, held_out)
        print(f"   {method}: perplexity {results['perplexity'][method]:.2f}", flush=True)
        if method == "hessian":
            results["layers"] = [(r.name, r.sparsity) for r in compressor.report().layers]
            compact = os.path.join(staging, "smollm2-135m.sparse.safetensors")
            compressor.export(compact)
            dense_file = os.path.join(staging, ".dense.safetensors")
            save_state_dict(model.state_dict(), dense_file)
            results["sizes"] = (os.path.getsize(dense_file), os.path.getsize(compact))
            os.remove(dense_file)
    return results


def prune_and_distill_minilm(quick):
    import torch
    import transformers as T

    from msmodelslim import assets
    from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig, get_distill_model
    from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
    from msmodelslim.pytorch.utils.text_classification import (SentenceClassifier, accuracy, bbc_splits, concat, train,
                                                       train_head)

    _say("3/3 all-MiniLM-L6: pruned into 3 layers (prune_model_weight), distilled on BBC News")
    encoder, tokenizer = assets.minilm_l6()
    sizes = (200, 60, 100) if quick else (800, 120, 300)
    (teacher_only, train_split, test_split), _ = bbc_splits(tokenizer, sizes=sizes, max_length=64)
    teacher = train_head(SentenceClassifier(encoder, 5), concat(teacher_only, train_split))
    config = T.BertConfig.from_pretrained(assets.minilm_l6_dir())
    config.num_hidden_layers, config.intermediate_size = 3, 768
    small = T.BertModel(config, add_pooling_layer=False)
    texts = assets.wiki_split()[0][:16]
    calibration = [dict(tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))]
    prune_config = PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"]).add_blocks_params(
        r"encoder\.layer\.(\d+)\.", {0: 0, 1: 2, 2: 5}).set_importance("activation", calibration, model=encoder)
    prune_model_weight(small, prune_config, str(assets.minilm_l6_dir()))
    student = SentenceClassifier(small, 5)
    torch.manual_seed(0)
    before = accuracy(train_head(copy.deepcopy(student), train_split), test_split)
    distill_config = (KnowledgeDistillConfig()
                      .add_output_soft_label({"t_output_idx": 0, "s_output_idx": 0, "loss_func": [
                          {"func_name": "KDKLDiv", "func_weight": 1, "temperature": 2}]})
                      .add_inter_soft_label({"t_module": "encoder.encoder.layer.5", "s_module": "encoder.encoder.layer.2",
                                             "t_output_idx": 0, "s_output_idx": 0,
                                             "loss_func": [{"func_name": "HiddenMse", "func_weight": 1}]}))
    distill_model = get_distill_model(teacher, student, distill_config)
    train(student, train_split, epochs=2 if quick else 6, distill_model=distill_model)
    student = distill_model.get_student_model()
    return {"teacher": accuracy(teacher, test_split), "student_head_only": before,
            "student_distilled": accuracy(student, test_split),
            "teacher_params": sum(p.numel() for p in teacher.parameters()),
            "student_params": sum(p.numel() for p in student.parameters()), "train": len(train_split["labels"]),
            "teacher_train": len(train_split["labels"]) + len(teacher_only["labels"]), "test": len(test_split["labels"])}


def _plots(staging, efficientnet, sparse, distill):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    names, values = zip(*sparse["layers"])
    figure, axis = plt.subplots(figsize=(12, 3.5))
    axis.bar(range(len(values)), values, width=1.0, color="#4477aa")
    axis.set(xlabel="layer (execution order)", ylabel="sparsity", ylim=(0, 1),
             title="SmolLM2-135M, SparseGPT 50 %: sparsity per Linear layer")
    figure.tight_layout()
    files.append("sparsity_per_layer.png")
    figure.savefig(os.path.join(staging, files[-1]), dpi=100)
    plt.close(figure)

    figure, axes = plt.subplots(1, 3, figsize=(10, 3.5))
    for axis, (key, label, scale) in zip(axes, (("params", "parameters (M)", 1e6), ("macs", "MACs (G)", 1e9),
                                                ("latency_ms", f"CPU latency, batch {efficientnet['batch']} (ms)", 1))):
        heights = [efficientnet["dense"][key] / scale, efficientnet["pruned"][key] / scale]
        axis.bar(["dense", "pruned"], heights, color=["#999999", "#228833"])
        axis.set_title(label)
    figure.suptitle("EfficientNet-Lite0 before and after PruneTorch")
    figure.tight_layout()
    files.append("efficientnet_before_after.png")
    figure.savefig(os.path.join(staging, files[-1]), dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 3.5))
    methods = list(sparse["perplexity"])
    axis.bar(methods, [sparse["perplexity"][m] for m in methods], color="#cc6677")
    axis.set(yscale="log", ylabel="perplexity (log scale)", title="SmolLM2-135M at 50 % sparsity")
    figure.tight_layout()
    files.append("perplexity_per_method.png")
    figure.savefig(os.path.join(staging, files[-1]), dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 3.5))
    labels = ["teacher (6 layers)", "student, head only", "student, distilled"]
    axis.bar(labels, [distill["teacher"], distill["student_head_only"], distill["student_distilled"]],
             color=["#999999", "#ddcc77", "#228833"])
    axis.set(ylim=(0, 1), ylabel="test accuracy", title="BBC News: MiniLM-L6 -> 3 layers")
    figure.tight_layout()
    files.append("distillation_accuracy.png")
    figure.savefig(os.path.join(staging, files[-1]), dpi=100)
    plt.close(figure)
    return files


def _summary(efficientnet, sparse, distill):
    from msmodelslim.utils.report import format_table

    dense, pruned = efficientnet["dense"], efficientnet["pruned"]
    ppl = sparse["perplexity"]
    dense_size, compact_size = sparse["sizes"]
    rows = [
        ["EfficientNet-Lite0 parameters", f"{dense['params']:,}", f"{pruned['params']:,}"],
        ["EfficientNet-Lite0 MACs", f"{dense['macs'] / 1e6:.0f}M", f"{pruned['macs'] / 1e6:.0f}M"],
        [f"EfficientNet-Lite0 CPU latency (batch {efficientnet['batch']})", f"{dense['latency_ms']:.1f} ms",
         f"{pruned['latency_ms']:.1f} ms"],
        ["EfficientNet-Lite0 top-1 agreement with dense", "1.000", f"{efficientnet['agreement']:.3f}"],
        ["SmolLM2-135M perplexity (SparseGPT 50 %)", f"{ppl['dense']:.2f}", f"{ppl['hessian']:.2f}"],
        ["SmolLM2-135M perplexity (plain magnitude 50 %)", f"{ppl['dense']:.2f}", f"{ppl['weight_magnitude']:.2f}"],
        ["SmolLM2-135M weights file", f"{dense_size / 2**20:.0f} MiB", f"{compact_size / 2**20:.0f} MiB (compact)"],
        ["MiniLM parameters (teacher -> student)", f"{distill['teacher_params']:,}", f"{distill['student_params']:,}"],
        ["BBC News accuracy (teacher -> distilled student)", f"{distill['teacher']:.3f}",
         f"{distill['student_distilled']:.3f}"],
    ]
    return format_table(["", "before", "after"], rows)


def run(args):
    """Check ``--out``, run the three parts of the demo, write the report and plots."""
    with OutputDirectory(args.out, (), args.overwrite, "demo") as output:
        _run(args, output)


def _run(args, output):
    started = time.perf_counter()
    with output.writing() as staging:
        efficientnet = prune_efficientnet(args.quick)
        sparse = sparsify_smollm(args.quick, staging)
        distill = prune_and_distill_minilm(args.quick)
        summary = _summary(efficientnet, sparse, distill)
        plots = _plots(staging, efficientnet, sparse, distill)
        elapsed = time.perf_counter() - started
        report = ["# msmodelslim demo" + (" (quick)" if args.quick else ""), "", summary, "",
                  f"- SmolLM2 calibration: {sparse['calibration']} Wikipedia tokens; perplexity on "
                  f"{sparse['held_out']} held-out tokens; every method: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in sparse["perplexity"].items()) + ".",
                  f"- MiniLM student before distillation (pruned, head trained alone): "
                  f"{distill['student_head_only']:.3f}; BBC News: the teacher's head learnt from "
                  f"{distill['teacher_train']} articles, the student from {distill['train']} of them; "
                  f"{distill['test']} test articles.",
                  f"- Finished in {elapsed:.0f} s.", ""]
        report += [f"![{name}]({name})" for name in plots]
        with open(os.path.join(staging, "report.md"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(report) + "\n")
    print("\n" + summary)
    print(f"\nReport and plots in {os.path.abspath(args.out)} ({time.perf_counter() - started:.0f} s)")
