"""Distillation benchmark on BBC News: a 3-layer student of all-MiniLM-L6 trained on hard labels only, with
logits KD, and with logits + hidden-state KD (3 seeds); the teacher's accuracy; and the time per training step
of DistillDualModels against a hand-written loop doing the same work.

Writes benchmarks/results/distill.md. Run: python benchmarks/bench_distill.py [--quick]
"""
import argparse
import copy
import statistics
import time

import torch

from common import write_result
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
    (teacher_only, train_split, test_split), _ = bbc_splits(tokenizer, sizes=(800, 120, 300), max_length=64)
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
            train(student, train_split, epochs=EPOCHS, seed=seed, distill_model=distill)
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


def timing_section(quick):
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

    def hand_step():
        with torch.no_grad():
            teacher_logits = teacher(**inputs)
        logits = student(**inputs)
        distill_loss = kl(logits, teacher_logits, TEMPERATURE) + mse(captured["s"][0], captured["t"][0])
        total = 0.5 * distill_loss + 0.5 * torch.nn.functional.cross_entropy(logits, batch["labels"])
        optimizer.zero_grad()
        total.backward()
        optimizer.step()

    repeats = 5 if quick else 20
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
    return table + (f"\n\n{repeats} interleaved training steps each (batch 16 x 64 tokens, teacher 6 layers, student 3 "
                    "layers, logits KL + one hidden-state MSE + cross-entropy), after 2 warm-up steps. Goal: ratio "
                    "<= 1.05.")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one seed, fewer timing steps")
    args = parser.parse_args()
    set_logger_level("warning")
    torch.set_num_threads(2)
    sections = [("BBC News classification", accuracy_section(args.quick)),
                ("Overhead of DistillDualModels", timing_section(args.quick))]
    write_result("distill", "Knowledge distillation (get_distill_model)", sections)


if __name__ == "__main__":
    main()
