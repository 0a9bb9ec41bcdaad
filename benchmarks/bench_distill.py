"""Distillation benchmark on BBC News: a 3-layer student of all-MiniLM-L6 trained on hard labels only, with
logits KD, and with logits + hidden-state KD (3 seeds); the teacher's accuracy; and the time per training step
of DistillDualModels against a hand-written loop doing the same work.

Writes benchmarks/results/distill.md. Run: python benchmarks/bench_distill.py [--quick]
"""
import argparse
import copy
import os
import statistics
import time

import torch

from common import merge_result, provenance
from msmodelslim import assets, set_logger_level
from msmodelslim.common.knowledge_distill.knowledge_distill import get_distill_model
from msmodelslim.pytorch.knowledge_distill.losses import HiddenMse, KDKLDiv
from msmodelslim.utils.report import format_table
from msmodelslim.pytorch.utils.text_classification import (SentenceClassifier, accuracy, batches, bbc_splits, concat,
                                                   train, train_head)
from zoo.minilm_task import TEMPERATURE, distill_config, student_encoder

EPOCHS = 6


def accuracy_section(quick):
    encoder, tokenizer = assets.minilm_l6()
    sizes = (32, 16, 16) if quick else (800, 120, 300)  # --quick: a smoke run of the script and its columns
    (teacher_only, train_split, test_split), _ = bbc_splits(tokenizer, sizes=sizes, max_length=64)
    teacher = train_head(SentenceClassifier(encoder, 5), concat(teacher_only, train_split))
    teacher_accuracy = accuracy(teacher, test_split)
    seeds = (0,) if quick else (0, 1, 2)
    results = {"hard labels only": [], "logits KD": [], "logits + hidden-state KD": []}
    for seed in seeds:
        torch.manual_seed(seed)
        start = SentenceClassifier(student_encoder(), 5)
        for label in results:
            student = copy.deepcopy(start)
            distill = None
            if label != "hard labels only":
                distill = get_distill_model(teacher, student, distill_config(hidden="hidden" in label))
            train(student, train_split, epochs=1 if quick else EPOCHS, seed=seed, distill_model=distill)
            results[label].append(accuracy(student, test_split))
            print(label, seed, results[label][-1], flush=True)
    rows = [["teacher: all-MiniLM-L6 + linear head", f"{teacher_accuracy:.3f}", "-"]]
    for label, values in results.items():
        rows.append([f"student: {label}", f"{statistics.mean(values):.3f}", " / ".join(f"{v:.3f}" for v in values)])
    note = ("BBC News, 64 tokens per article. Teacher: frozen all-MiniLM-L6 with a linear head trained on 920 "
            "articles. Student: all-MiniLM-L6 pruned to 3 layers (0, 2, 5) and FFN 768 with prune_model_weight, "
            "plus a new head, trained on 120 of those articles only: 6 epochs of AdamW (encoder 5e-5, head 1e-3), "
            "batch 16. KD: KDKLDiv at T=2 on the logits, plus HiddenMse between student layer 2 and teacher layer 5 "
            "outputs; total = 0.5 distill + 0.5 hard (get_total_loss). Test: 300 other articles.")
    return format_table(["model", f"test accuracy (mean of {len(seeds)} seeds)", "per seed"], rows) + "\n\n" + note


def same_work_check(distill, inputs, hand_losses, with_hand_hooks, hand_hooks, student):
    """Both loops must compute the same distillation loss on the same batch (student in eval mode: no dropout)."""
    student.eval()
    with torch.no_grad():
        wrapper_loss = distill(**inputs)[0]
        distill.remove_hooks()
        with_hand_hooks()
        hand_loss = hand_losses()[0]
    for handle in hand_hooks:
        handle.remove()
    hand_hooks.clear()
    student.train()
    if not torch.allclose(wrapper_loss, hand_loss, rtol=1e-6, atol=0):
        raise SystemExit(f"the hand-written loop computes {hand_loss.item()!r}, the wrapper {wrapper_loss.item()!r}: "
                         "not the same work")
    return wrapper_loss.item()


def timing_section(quick):
    load_before = os.getloadavg()[0]
    encoder, tokenizer = assets.minilm_l6()
    (train_split,), _ = bbc_splits(tokenizer, sizes=(32,), max_length=64)
    batch = next(batches(train_split, 16))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    teacher = SentenceClassifier(encoder, 5).eval()
    student = SentenceClassifier(student_encoder(), 5)
    distill = get_distill_model(teacher, student, distill_config(hidden=True))
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    kl, mse = KDKLDiv(), HiddenMse()
    captured = {}
    hand_hooks = []

    def with_hand_hooks():
        for side, module in (("t", teacher.encoder.encoder.layer[5]), ("s", student.encoder.encoder.layer[2])):
            hand_hooks.append(module.register_forward_hook(lambda m, i, o, _s=side: captured.__setitem__(_s, o)))

    def wrapper_step():
        loss, logits, _ = distill(**inputs)
        total = distill.get_total_loss(torch.nn.functional.cross_entropy(logits, batch["labels"]))
        optimizer.zero_grad()
        total.backward()
        optimizer.step()

    def hand_losses():
        with torch.no_grad():
            teacher_logits = teacher(**inputs)
        logits = student(**inputs)
        # the wrapper's losses: the hidden-state MSE over the unpadded positions (the attention mask), the layer's
        # whole output (a BertLayer returns a tensor in recent transformers, a tuple in older ones)
        hidden_s, hidden_t = (captured[side][0] if isinstance(captured[side], tuple) else captured[side]
                              for side in ("s", "t"))
        distill_loss = (mse(hidden_s, hidden_t, mask=inputs["attention_mask"])
                        + kl(logits, teacher_logits, TEMPERATURE))
        return distill_loss, logits

    def hand_step():
        distill_loss, logits = hand_losses()
        total = 0.5 * distill_loss + 0.5 * torch.nn.functional.cross_entropy(logits, batch["labels"])
        optimizer.zero_grad()
        total.backward()
        optimizer.step()

    same_work_check(distill, inputs, hand_losses, with_hand_hooks, hand_hooks, student)

    repeats = 2 if quick else 20
    samples = {"wrapper": [], "hand": []}
    for _ in range(2):  # warm-up
        wrapper_step()
    for _ in range(repeats):  # interleaved, so both see the same machine state
        distill._attach_hooks()
        start = time.perf_counter()
        wrapper_step()
        samples["wrapper"].append(time.perf_counter() - start)
        distill.remove_hooks()
        with_hand_hooks()
        start = time.perf_counter()
        hand_step()
        samples["hand"].append(time.perf_counter() - start)
        for handle in hand_hooks:
            handle.remove()
        hand_hooks.clear()
    wrapper, hand = statistics.median(samples["wrapper"]), statistics.median(samples["hand"])
    table = format_table(["loop", "median ms per step", "ratio"],
                         [["hand-written (teacher no_grad + student + same losses)", f"{hand * 1000:.1f}", "1.00"],
                          ["DistillDualModels", f"{wrapper * 1000:.1f}", f"{wrapper / hand:.3f}"]])
    spread = {loop: f"{min(v) * 1000:.1f}-{max(v) * 1000:.1f}" for loop, v in samples.items()}
    return table + (f"\n\n{repeats} interleaved training steps each (batch 16 x 64 tokens, teacher 6 layers, student 3 "
                    "layers, logits KL + one hidden-state MSE over the unpadded positions + cross-entropy), after 2 "
                    "warm-up steps; min-max: hand-written " + spread["hand"] + " ms, DistillDualModels "
                    + spread["wrapper"] + " ms. Before timing, the script checks that both loops compute the same "
                    "distillation loss on the batch. Goal: ratio <= 1.05. "
                    + provenance(load_before=load_before) + ".")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny splits, one seed and epoch")
    parser.add_argument("--part", choices=["accuracy", "timing", "all"], default="all",
                        help="measure one section of distill.md (the other is kept as it is)")
    parser.add_argument("--results", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    set_logger_level("warning")
    torch.set_num_threads(2)
    parts = {"accuracy": ("BBC News classification", accuracy_section),
             "timing": ("Overhead of DistillDualModels", timing_section)}
    chosen = list(parts) if args.part == "all" else [args.part]
    sections = [(parts[part][0], parts[part][1](args.quick)) for part in chosen]
    merge_result("distill", "Knowledge distillation (get_distill_model)", sections, args.results)


if __name__ == "__main__":
    main()
