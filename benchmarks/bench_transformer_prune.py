"""Transformer weight pruning benchmark: first-N (the original) vs weight vs activation importance on real
MiniLM-L6 and SmolLM2-135M, wall time, and the peak memory of prune_model_weight reading a safetensors file.

Writes benchmarks/results/transformer_prune.md. Run: python benchmarks/bench_transformer_prune.py [--quick]
"""
import argparse
import json
import subprocess
import sys
import time

import torch
import transformers as T

from common import ROOT, RUNS, spread, timed_runs, write_result
from msmodelslim import assets, set_logger_level
from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
from msmodelslim.pytorch.utils.evaluation import perplexity, sentence_embeddings
from msmodelslim.utils.report import format_table

IMPORTANCE = ("first", "weight", "activation")
PROBE = (400, 200)  # BBC articles: probe training / test (--quick: 40 / 20)
SECONDS_NOTE = f"'prune s': median (min-max) of {RUNS} runs of prune_model_weight, each into a freshly built model."


def bbc_probe(model, tokenizer, docs, labels):
    """Accuracy of a logistic regression on mean-pooled embeddings: PROBE[0] training, PROBE[1] test articles."""
    from sklearn.linear_model import LogisticRegression

    features = sentence_embeddings(model, tokenizer, docs, max_length=128).numpy()
    probe = LogisticRegression(max_iter=2000).fit(features[:PROBE[0]], labels[:PROBE[0]])
    return probe.score(features[PROBE[0]:], labels[PROBE[0]:])


def bbc_subset():
    docs, labels, _ = assets.bbc_news()
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(0))[:sum(PROBE)].tolist()
    return [docs[i] for i in order], [labels[i] for i in order]


def similarity_agreement(a, b):
    upper = torch.triu_indices(len(a), len(a), 1)
    return torch.corrcoef(torch.stack([(a @ a.T)[upper[0], upper[1]], (b @ b.T)[upper[0], upper[1]]]))[0, 1].item()


def pruned_runs(build, checkpoint):
    """``prune_model_weight`` on RUNS fresh ``(model, prune_config)`` pairs from ``build()``: the last pair, pruned,
    and the seconds of the runs written as median (min-max)."""
    (model, prune_config), _, seconds = timed_runs(
        build, lambda pair: prune_model_weight(pair[0], pair[1], str(checkpoint)))
    return model, prune_config, spread(seconds)


def minilm_setup(quick):
    """The MiniLM-L6 teacher, its tokenizer, 64 Wikipedia calibration extracts, held-out extracts with the
    teacher's embeddings of them, and the BBC probe subset."""
    teacher, tokenizer = assets.minilm_l6()
    train, test = assets.wiki_split()
    calibration = [dict(tokenizer(train[i:i + 16], padding=True, truncation=True, max_length=128,
                                  return_tensors="pt")) for i in range(0, 64, 16)]
    held_out = test[:16 if quick else 300]
    return teacher, tokenizer, calibration, held_out, sentence_embeddings(teacher, tokenizer, held_out), bbc_subset()


def minilm_section(quick):
    teacher, tokenizer, calibration, held_out, reference, (docs, labels) = minilm_setup(quick)
    rows = [["MiniLM-L6 (teacher)", "-", "1.000", "1.000", f"{bbc_probe(teacher, tokenizer, docs, labels):.3f}", "-"]]
    shapes = [("3 layers, FFN 768", {"num_hidden_layers": 3, "intermediate_size": 768}, {0: 0, 1: 2, 2: 5}),
              ("6 layers, hidden 256, 8 heads", {"hidden_size": 256, "num_attention_heads": 8},
               {i: i for i in range(6)})]
    for label, shape, layer_map in shapes[:1] if quick else shapes:  # --quick: a smoke run
        for importance in ("first",) if quick else IMPORTANCE:
            def build():
                config = T.BertConfig.from_pretrained(assets.minilm_l6_dir())
                for key, value in shape.items():
                    setattr(config, key, value)
                prune_config = PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"]).add_blocks_params(
                    r"encoder\.layer\.(\d+)\.", layer_map)
                if importance == "activation":
                    prune_config.set_importance("activation", calibration, model=teacher)
                else:
                    prune_config.set_importance(importance)
                return T.BertModel(config, add_pooling_layer=False).eval(), prune_config

            model, _, seconds = pruned_runs(build, assets.minilm_l6_dir())
            embeddings = sentence_embeddings(model, tokenizer, held_out)
            cosine = (embeddings * reference).sum(-1).mean().item() if embeddings.shape == reference.shape else None
            rows.append([label, importance, "-" if cosine is None else f"{cosine:.3f}",
                         f"{similarity_agreement(reference, embeddings):.3f}",
                         f"{bbc_probe(model, tokenizer, docs, labels):.3f}", seconds])
            print(rows[-1], flush=True)
    return format_table(["small shape", "importance", "cosine to teacher", "similarity agreement",
                         "BBC probe accuracy", "prune s"], rows) + (
        f"\n\nCosine: mean cosine between the small model's and the teacher's sentence embeddings of {len(held_out)} "
        "held-out Wikipedia extracts (defined when the hidden size is kept). Similarity agreement: correlation of "
        f"their pairwise similarities. BBC probe: logistic regression on the embeddings, {PROBE[0]} training / "
        f"{PROBE[1]} test articles. Activation importance uses 64 Wikipedia training extracts. No training after "
        f"pruning. {SECONDS_NOTE}")


def smollm_section(quick):
    path = assets.smollm2_135m_dir()
    tokenizer = T.AutoTokenizer.from_pretrained(path)
    calibration = [{"input_ids": c} for c in assets.wiki_token_chunks(tokenizer, "train", 8, 256).split(2)]
    evaluation = assets.wiki_token_chunks(tokenizer, "test", 1 if quick else 16, 64 if quick else 256)
    dense = T.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = [["SmolLM2-135M (dense)", "-", f"{perplexity(dense, evaluation):.2f}", "-"]]
    del dense
    shapes = [("20 layers, FFN 1024, 6/2 heads", dict(num_hidden_layers=20, intermediate_size=1024,
                                                      num_attention_heads=6, num_key_value_heads=2, head_dim=64),
               {i: layer for i, layer in enumerate(list(range(14)) + list(range(24, 30)))}),
              ("30 layers, FFN 768", dict(intermediate_size=768), {i: i for i in range(30)})]
    for label, shape, layer_map in shapes[1:] if quick else shapes:
        for importance in ("first",) if quick else IMPORTANCE:
            def build():
                config = T.AutoConfig.from_pretrained(path)
                for key, value in shape.items():
                    setattr(config, key, value)
                prune_config = PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"]).add_blocks_params(
                    r"model\.layers\.(\d+)\.", layer_map)
                if importance == "activation":
                    prune_config.set_importance("activation", calibration)
                else:
                    prune_config.set_importance(importance)
                return T.LlamaForCausalLM(config).eval(), prune_config

            model, _, seconds = pruned_runs(build, path)
            rows.append([label, importance, f"{perplexity(model, evaluation):.1f}", seconds])
            print(rows[-1], flush=True)
    return format_table(["small shape", "importance", "perplexity", "prune s"], rows) + (
        f"\n\nPerplexity on {len(evaluation)} x 256 tokens of the Wikipedia test split, no training after pruning. "
        "Activation importance: 8 x 256 training tokens through the big model, block by block (its wall time "
        f"includes loading the big model from the directory). {SECONDS_NOTE}")


def depth_section(quick):
    """Which checkpoint layers a shallower model keeps: hand-picked maps against layer_id_map="auto"."""
    rows = []
    teacher, tokenizer, calibration, held_out, reference, (docs, labels) = minilm_setup(quick)
    minilm_maps = (("first 3 (0, 1, 2)", {0: 0, 1: 1, 2: 2}), ("spread (0, 2, 5)", {0: 0, 1: 2, 2: 5}),
                   ("auto", "auto"))
    for label, layer_map in minilm_maps[:1] if quick else minilm_maps:
        def build():
            config = T.BertConfig.from_pretrained(assets.minilm_l6_dir())
            config.num_hidden_layers = 3
            return T.BertModel(config, add_pooling_layer=False).eval(), (
                PruneConfig().set_steps(["prune_blocks"]).add_blocks_params(r"encoder\.layer\.(\d+)\.", layer_map)
                .set_importance("first", calibration, model=teacher))

        model, prune_config, seconds = pruned_runs(build, assets.minilm_l6_dir())
        embeddings = sentence_embeddings(model, tokenizer, held_out)
        kept = list(prune_config.report["layers"].values())
        rows.append(["MiniLM-L6 -> 3 layers", label, str(kept), f"{(embeddings * reference).sum(-1).mean().item():.3f}",
                     f"{bbc_probe(model, tokenizer, docs, labels):.3f}", "-", seconds])
        print(rows[-1], flush=True)
    path = assets.smollm2_135m_dir()
    tokenizer = T.AutoTokenizer.from_pretrained(path)
    calibration = [{"input_ids": c} for c in assets.wiki_token_chunks(tokenizer, "train", 8, 256).split(2)]
    evaluation = assets.wiki_token_chunks(tokenizer, "test", 1 if quick else 16, 64 if quick else 256)
    maps = (("first 14 + last 6", list(range(14)) + list(range(24, 30))),
            ("evenly spaced", [round(i * 29 / 19) for i in range(20)]), ("auto", "auto"))
    for label, layers in () if quick else maps:  # --quick: MiniLM's rows only
        def build():
            config = T.AutoConfig.from_pretrained(path)
            config.num_hidden_layers = 20
            layer_map = layers if layers == "auto" else dict(enumerate(layers))
            return T.LlamaForCausalLM(config).eval(), (
                PruneConfig().set_steps(["prune_blocks"]).add_blocks_params(r"model\.layers\.(\d+)\.", layer_map)
                .set_importance("first", calibration))

        model, prune_config, seconds = pruned_runs(build, path)
        kept = list(prune_config.report["layers"].values())
        rows.append(["SmolLM2-135M -> 20 layers", label, str(kept), "-", "-", f"{perplexity(model, evaluation):.1f}",
                     seconds])
        print(rows[-1], flush=True)
        del model
    return format_table(["model", "layer map", "checkpoint layers kept", "cosine to teacher", "BBC probe accuracy",
                         "perplexity", "prune s"], rows) + (
        "\n\nOnly prune_blocks (widths unchanged), no training after pruning. 'auto' keeps the layers of highest "
        "block influence (mean 1 - cos between a block's input and output hidden states) measured on the "
        "calibration data of the sections above (64 Wikipedia extracts for MiniLM, 8 x 256 tokens for SmolLM2; its "
        f"wall time includes loading the big model from the directory). Same metrics as above. {SECONDS_NOTE}")


MEMORY_SCRIPT = r"""
import gc, json, sys, threading, time
import psutil, torch, transformers as T
from msmodelslim import assets, set_logger_level
from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
set_logger_level("error")
path = assets.smollm2_135m_dir()
config = T.AutoConfig.from_pretrained(path)
config.num_hidden_layers, config.intermediate_size = 10, 768
model = T.LlamaForCausalLM(config)
unique = {t.data_ptr(): t for t in model.state_dict().values()}
small_mb = sum(t.numel() * t.element_size() for t in unique.values()) / 2**20
gc.collect()
process = psutil.Process()
base = process.memory_info().rss
peak = [base]
running = [True]
def sample():
    while running[0]:
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.005)
thread = threading.Thread(target=sample); thread.start()
prune_config = PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"]).add_blocks_params(
    r"model\.layers\.(\d+)\.", {i: 3 * i for i in range(10)})
start = time.perf_counter()
prune_model_weight(model, prune_config, str(path / "model.safetensors"))
seconds = time.perf_counter() - start
running[0] = False; thread.join()
print(json.dumps({"small_mb": small_mb, "extra_mb": (peak[0] - base) / 2**20, "seconds": seconds,
                  "checkpoint_mb": (path / "model.safetensors").stat().st_size / 2**20}))
"""


def memory_section():
    runs = [json.loads(subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True,
                                      check=True, cwd=ROOT).stdout.strip().splitlines()[-1]) for _ in range(RUNS)]
    result = {**runs[0], "extra_mb": max(run["extra_mb"] for run in runs)}
    largest = 49152 * 576 * 4 / 2**20
    table = format_table(["checkpoint (safetensors)", "small model", "largest checkpoint tensor",
                          "extra peak RSS during prune_model_weight", "seconds"],
                         [[f"{result['checkpoint_mb']:.0f} MiB", f"{result['small_mb']:.0f} MiB", f"{largest:.0f} MiB",
                           f"{result['extra_mb']:.0f} MiB", spread([run["seconds"] for run in runs])]])
    return table + ("\n\nSmolLM2-135M (fp32 safetensors) into a 10-layer model with FFN 768. The checkpoint is "
                    "memory-mapped and read one tensor at a time; the extra memory is the small model's complete "
                    "state dict, built and checked before loading, plus the tensor being read (the largest is the "
                    "embedding), and does not grow with the checkpoint. Memory-mapped pages of the file count in "
                    f"RSS while they are read. Seconds: median (min-max) of {RUNS} runs, each in its own process; "
                    "the memory is the largest of them.")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: one shape and importance per model")
    parser.add_argument("--results", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    if args.quick:
        global PROBE
        PROBE = (40, 20)
    set_logger_level("warning")
    start = time.perf_counter()
    sections = [("MiniLM-L6 (real BERT encoder)", minilm_section(args.quick)),
                ("SmolLM2-135M (real Llama, grouped-query attention)", smollm_section(args.quick)),
                ("Which layers to keep: hand-picked maps and layer_id_map=\"auto\"", depth_section(args.quick)),
                ("Peak memory reading a checkpoint lazily", memory_section())]
    write_result("transformer_prune", "Transformer weight pruning (prune_model_weight)", sections, args.results)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
