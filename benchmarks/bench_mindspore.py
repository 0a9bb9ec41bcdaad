"""MindSpore backend benchmark, beside the torch backend in the same run: transformer weight pruning of the real
all-MiniLM-L6 (first / weight / activation importance), BBC News distillation (hard labels only vs logits KD, 3
seeds), and the time per training step of the MindSpore ``DistillDualModels`` against a hand-written MindSpore step
doing the same work, interleaved.

Writes benchmarks/results/mindspore.md. Run: python benchmarks/bench_mindspore.py [--quick]
Sizes are small on purpose (2 CPU cores): they are stated under each table.
"""
import argparse
import os
import platform
import statistics
import subprocess
import time

import mindspore as ms
import numpy as np
import torch
from mindspore import nn, ops

from common import ROOT, RUNS, spread, timed_runs, write_result
from msmodelslim import assets, set_logger_level
from msmodelslim.mindspore.knowledge_distill.losses import KDCrossEntropy
from msmodelslim.utils.report import format_table
from zoo import ms_bbc_task as task
from zoo.ms_bert import minilm_l6_ms, save_ckpt, sentence_embeddings_ms

IMPORTANCE = ("first", "weight", "activation")
CKPT = ROOT / "benchmarks" / "results" / ".minilm_l6.ckpt"  # temporary, removed at the end
HELD_OUT, CALIBRATION, PROBE = 64, 32, (200, 100)  # Wikipedia sentences; calibration extracts; BBC train/test
DISTILL_SIZES, MAX_LENGTH, EPOCHS, BATCH = (300, 64, 150), 32, 3, 16  # teacher-only / train / test articles


# --------------------------------------------------------------------------------------------- provenance
def provenance():
    """Commit, library versions read now, and the machine's load, as one Markdown paragraph."""
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"Commit {commit}; mindspore {ms.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
            f"transformers {transformers.__version__}, Python {platform.python_version()}; load average at the end "
            f"{load} (1/5/15 min; the 2 cores were shared, so absolute times are noisy, ratios less so).")


# ------------------------------------------------------------------------------------------- pruning table
def probe_accuracy(features, labels):
    """Logistic regression on embeddings: trained on the first PROBE[0], scored on the rest."""
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(max_iter=2000).fit(features[:PROBE[0]], labels[:PROBE[0]])
    return probe.score(features[PROBE[0]:], labels[PROBE[0]:])


def prune_data():
    """Held-out and calibration Wikipedia extracts, the BBC probe articles and their labels, the tokenizer."""
    train, test = assets.wiki_split()
    docs, labels, _ = assets.bbc_news()
    order = np.random.default_rng(0).permutation(len(docs))[:sum(PROBE)]
    return test[:HELD_OUT], train[:CALIBRATION], [docs[i] for i in order], [labels[i] for i in order]


def ms_prune_rows(tokenizer, held_out, calibration, docs, labels):
    """MindSpore rows: cosine of the pruned Cell's embeddings to the teacher's, BBC probe, prune seconds."""
    big = minilm_l6_ms()
    save_ckpt(big, CKPT)
    reference = sentence_embeddings_ms(big, tokenizer, held_out)
    batches = []
    for i in range(0, len(calibration), 16):
        enc = tokenizer(calibration[i:i + 16], padding=True, truncation=True, max_length=128, return_tensors="np")
        batches.append(tuple(ms.Tensor(enc[key].astype(np.int32)) for key in ("input_ids", "attention_mask")))
    rows = [["MindSpore", "MiniLM-L6 (teacher)", "1.000",
             f"{probe_accuracy(sentence_embeddings_ms(big, tokenizer, docs, max_length=64), labels):.3f}", "-"]]
    for importance in IMPORTANCE:
        _, small, seconds = timed_runs(task.student_skeleton,
                                       lambda cell: task.prune_into(cell, CKPT, importance, batches, big))
        small.set_train(False)
        cosine = float((sentence_embeddings_ms(small, tokenizer, held_out) * reference).sum(-1).mean())
        probe = probe_accuracy(sentence_embeddings_ms(small, tokenizer, docs, max_length=64), labels)
        rows.append(["MindSpore", f"3 layers, FFN 768, {importance}", f"{cosine:.3f}", f"{probe:.3f}",
                     spread(seconds)])
        print(rows[-1], flush=True)
    return rows


def torch_prune_rows(tokenizer, held_out, calibration, docs, labels):
    """The same rows for the torch backend (Hugging Face BertModel, safetensors directory)."""
    import transformers as T

    from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
    from msmodelslim.pytorch.utils.evaluation import sentence_embeddings

    teacher, _ = assets.minilm_l6()
    reference = sentence_embeddings(teacher, tokenizer, held_out)
    batches = [dict(tokenizer(calibration[i:i + 16], padding=True, truncation=True, max_length=128,
                              return_tensors="pt")) for i in range(0, len(calibration), 16)]
    rows = [["torch", "MiniLM-L6 (teacher)", "1.000",
             f"{probe_accuracy(sentence_embeddings(teacher, tokenizer, docs, max_length=64).numpy(), labels):.3f}",
             "-"]]
    for importance in IMPORTANCE:
        def build():
            config = T.BertConfig.from_pretrained(assets.minilm_l6_dir())
            config.num_hidden_layers, config.intermediate_size = 3, 768
            prune = PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"]).add_blocks_params(
                r"encoder\.layer\.(\d+)\.", task.LAYER_MAP)
            if importance == "activation":
                prune.set_importance("activation", batches, model=teacher)
            else:
                prune.set_importance(importance)
            return T.BertModel(config, add_pooling_layer=False).eval(), prune

        (model, _), _, seconds = timed_runs(
            build, lambda pair: prune_model_weight(*pair, str(assets.minilm_l6_dir())))
        cosine = (sentence_embeddings(model, tokenizer, held_out) * reference).sum(-1).mean().item()
        probe = probe_accuracy(sentence_embeddings(model, tokenizer, docs, max_length=64).numpy(), labels)
        rows.append(["torch", f"3 layers, FFN 768, {importance}", f"{cosine:.3f}", f"{probe:.3f}",
                     spread(seconds)])
        print(rows[-1], flush=True)
    return rows


def prune_section(quick=False):
    """The transformer-prune table, MindSpore rows then torch rows (--quick: MindSpore only)."""
    tokenizer = assets.minilm_tokenizer()
    data = prune_data()
    rows = ms_prune_rows(tokenizer, *data) + ([] if quick else torch_prune_rows(tokenizer, *data))
    return format_table(["backend", "model", "cosine to teacher", "BBC probe accuracy", "prune s"], rows) + (
        f"\n\nMiniLM-L6 pruned to layers 0, 2, 5 and FFN 768 by prune_model_weight (MindSpore: from a `.ckpt` of the "
        f"MindSpore MiniLM; torch: from the safetensors directory), no training. Cosine: mean cosine between the "
        f"small and the teacher's mean-pooled sentence embeddings of {HELD_OUT} held-out Wikipedia extracts "
        f"(128 tokens). BBC probe: logistic regression on the embeddings (64 tokens), {PROBE[0]} training / "
        f"{PROBE[1]} test articles. Activation importance: {CALIBRATION} Wikipedia training extracts. 'prune s': "
        f"median (min-max) of {RUNS} runs of prune_model_weight, each into a freshly built small model.")


# -------------------------------------------------------------------------------------- distillation table
def ms_distill(seeds):
    """MindSpore: teacher accuracy, and per label the held-out accuracies of the students, one per seed."""
    teacher_only, train_split, test_split = task.bbc_splits_np(assets.minilm_tokenizer(), DISTILL_SIZES, MAX_LENGTH)
    teacher = task.teacher_classifier(task.concat(teacher_only, train_split))
    results = {"hard labels only": [], "logits KD": []}
    for seed in seeds:
        for label in results:
            ms.set_seed(seed)
            student = task.MsSentenceClassifier(task.student_cell(CKPT))
            kd_teacher = teacher if label == "logits KD" else None
            student = task.train(student, train_split, teacher=kd_teacher, epochs=EPOCHS, batch_size=BATCH, seed=seed)
            results[label].append(task.accuracy(student, test_split))
            print("MindSpore", label, seed, results[label][-1], flush=True)
    return task.accuracy(teacher, test_split), results


def torch_distill(seeds):
    """torch: the same task with the torch backend (the same sizes, its own seeded split)."""
    from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig, get_distill_model
    from msmodelslim.pytorch.utils.text_classification import (SentenceClassifier, accuracy, bbc_splits, concat,
                                                               train, train_head)
    from zoo.minilm_task import student_encoder

    encoder, tokenizer = assets.minilm_l6()
    (teacher_only, train_split, test_split), _ = bbc_splits(tokenizer, sizes=DISTILL_SIZES, max_length=MAX_LENGTH)
    teacher = train_head(SentenceClassifier(encoder, task.CLASSES), concat(teacher_only, train_split))
    config = KnowledgeDistillConfig().add_output_soft_label(
        {"t_output_idx": 0, "s_output_idx": 0,
         "loss_func": [{"func_name": "KDCrossEntropy", "func_weight": 1, "temperature": task.TEMPERATURE}]})
    results = {"hard labels only": [], "logits KD": []}
    for seed in seeds:
        for label in results:
            torch.manual_seed(seed)
            student = SentenceClassifier(student_encoder(), task.CLASSES)
            distill = get_distill_model(teacher, student, config) if label == "logits KD" else None
            train(student, train_split, epochs=EPOCHS, batch_size=BATCH, seed=seed, distill_model=distill)
            results[label].append(accuracy(student, test_split))
            print("torch", label, seed, results[label][-1], flush=True)
    return accuracy(teacher, test_split), results


def distill_section(quick):
    """The distillation table: MindSpore (PyNative) and torch, hard only vs KD."""
    seeds = (0,) if quick else (0, 1, 2)
    rows = []
    backends = (("MindSpore (PyNative)", ms_distill),) + (() if quick else (("torch", torch_distill),))
    for backend, run in backends:
        teacher_accuracy, results = run(seeds)
        rows.append([backend, "teacher: MiniLM-L6 + linear head", f"{teacher_accuracy:.3f}", "-"])
        for label, values in results.items():
            rows.append([backend, f"student: {label}", f"{statistics.mean(values):.3f}",
                         " / ".join(f"{v:.3f}" for v in values)])
    a, b, c = DISTILL_SIZES
    return format_table(["backend", "model", f"test accuracy (mean of {len(seeds)} seeds)", "per seed"], rows) + (
        f"\n\nBBC News, {MAX_LENGTH} tokens per article. Teacher: frozen MiniLM-L6 with a linear head trained on "
        f"{a + b} articles. Student: MiniLM-L6 pruned to 3 layers (0, 2, 5), FFN 768 (first-N) plus a new head, "
        f"trained on {b} of those articles only: {EPOCHS} epochs, batch {BATCH}, encoder lr 5e-5, head lr 1e-3, "
        "weight decay 0.01 (torch: AdamW; MindSpore: nn.AdamWeightDecay, which has no bias correction, so its first "
        "steps are about 3x larger - with this few steps the MindSpore students train further; compare KD against "
        "hard labels within a backend, not across). "
        f"KD: KDCrossEntropy at T={task.TEMPERATURE:g} on the logits, total = 0.5 hard + 0.5 distill. Test: {c} "
        "other articles. Each backend draws its own seeded split. No GRAPH_MODE row: not run within this "
        "benchmark's time budget on 2 shared cores (GRAPH_MODE training is tested on tiny models in "
        "tests/mindspore/test_distill_ms.py).")


# ------------------------------------------------------------------------------------------- timing table
class HandKD(nn.Cell):
    """The same work as the dual model, written by hand: teacher logits without gradient, the student's own loss,
    KDCrossEntropy at T, ``0.5 * hard + 0.5 * distill``."""

    def __init__(self, teacher, student):
        super().__init__(auto_prefix=False)
        self.teacher, self.student = teacher, student
        self.kd = KDCrossEntropy()

    def construct(self, input_ids, attention_mask, labels):
        teacher_logits = ops.stop_gradient(self.teacher(input_ids, attention_mask, labels)[1])
        hard, logits = self.student(input_ids, attention_mask, labels)
        return 0.5 * hard + 0.5 * self.kd(logits, teacher_logits, task.TEMPERATURE)


def timing_section(quick):
    """Median ms per step of TrainOneStepCell(dual) and TrainOneStepCell(HandKD), interleaved step by step."""
    from msmodelslim.common.knowledge_distill.knowledge_distill import get_distill_model

    train_split, = task.bbc_splits_np(assets.minilm_tokenizer(), (BATCH,), MAX_LENGTH)
    batch = next(task.batches(train_split, BATCH))
    teacher = task.MsSentenceClassifier(minilm_l6_ms())
    for param in teacher.get_parameters():
        param.requires_grad = False
    ms.set_seed(0)
    student = task.MsSentenceClassifier(task.student_cell(CKPT))
    hand = HandKD(teacher, student)
    hand_step = nn.TrainOneStepCell(hand, task.optimizer(hand.trainable_params(), student))
    dual = get_distill_model(teacher, student, task.distill_config())
    dual_step = nn.TrainOneStepCell(dual, task.optimizer(dual.trainable_params(), student))
    for step in (dual_step, hand_step):
        step.set_train(True)
        step(*batch)  # warm-up
    teacher.set_train(False)
    repeats = 2 if quick else 12
    samples = {"dual": [], "hand": []}
    for _ in range(repeats):
        for name, step in (("dual", dual_step), ("hand", hand_step)):
            start = time.perf_counter()
            step(*batch)
            samples[name].append(time.perf_counter() - start)
    ratios = [d / h for d, h in zip(samples["dual"], samples["hand"])]
    dual_ms, hand_ms = (statistics.median(samples[k]) * 1000 for k in ("dual", "hand"))
    table = format_table(["MindSpore step (PyNative)", "median ms per step", "ratio"],
                         [["hand-written (teacher stop_gradient + student + same losses)", f"{hand_ms:.0f}", "1.00"],
                          ["DistillDualModels", f"{dual_ms:.0f}", f"{statistics.median(ratios):.3f}"]])
    return table + (f"\n\n{repeats} interleaved nn.TrainOneStepCell steps each (batch {BATCH} x {MAX_LENGTH} tokens, "
                    "teacher 6 layers, student 3 layers, KDCrossEntropy on the logits + the student's cross-entropy, "
                    "AdamWeightDecay), after one warm-up step each; ratio: median of the per-pair ratios. "
                    "Goal: ratio <= 1.05.")


def use_quick_sizes():
    """Seconds instead of minutes: a check that the script runs and writes its tables, not a measurement."""
    global IMPORTANCE, HELD_OUT, CALIBRATION, PROBE, DISTILL_SIZES, EPOCHS
    IMPORTANCE, HELD_OUT, CALIBRATION, PROBE = ("first",), 8, 16, (24, 16)
    DISTILL_SIZES, EPOCHS = (16, 16, 16), 1


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one seed, 2 timing steps: a smoke run")
    parser.add_argument("--results", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    if args.quick:
        use_quick_sizes()
    set_logger_level("warning")
    ms.set_device("CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    torch.set_num_threads(2)
    start = time.perf_counter()
    try:
        sections = [("Transformer weight pruning (MiniLM-L6, MindSpore and torch)", prune_section(args.quick)),
                    ("BBC News distillation (MindSpore and torch)", distill_section(args.quick)),
                    ("Overhead of the MindSpore DistillDualModels", timing_section(args.quick))]
    finally:
        CKPT.unlink(missing_ok=True)
    sections.append(("Provenance", provenance() + f" Total run time {time.perf_counter() - start:.0f} s."))
    write_result("mindspore", "MindSpore backend (prune_model_weight, get_distill_model)", sections, args.results)


if __name__ == "__main__":
    main()
