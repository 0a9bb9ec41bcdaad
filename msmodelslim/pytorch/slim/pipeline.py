"""``slim_model`` for PyTorch: search an architecture under the budget, fill each candidate with the teacher's
most important weights (``prune_model_weight``, activation importance, layers by block influence), rank the
candidates by a proxy, give the best few a short distillation and rank them again (ranking before any training
misleads, Minitron), then distill the winner for the whole token budget.

Checkpoints (optional, :mod:`.checkpoints`): a run resumed after its search skips it.
"""
import contextlib
import dataclasses
import json
import math
import os
import statistics
import tempfile
import time
import weakref
from functools import lru_cache

import torch

from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
from msmodelslim.common.slim import search
from msmodelslim.common.slim.result import SlimResult
from msmodelslim.pytorch.prune.structure import layer_pattern
from msmodelslim.pytorch.slim import data as slim_data
from msmodelslim.pytorch.slim import distributed
from msmodelslim.pytorch.slim import families
from msmodelslim.pytorch.slim.checkpoints import FINAL_FILE, SEARCH_FILE, START_FILE, Checkpoints
from msmodelslim.pytorch.slim.latency import Latency
from msmodelslim.pytorch.slim.objective import CLASSIFIER_SUFFIX, objective_for
from msmodelslim.pytorch.slim.train import Distillation, TrainPlan
from msmodelslim.utils.logging import logger

LATENCY_ROUNDS = 3  # searches under a latency budget: the first, then two re-aimed at the measured ratios


def load_teacher(model, tokenizer):
    """``(teacher, tokenizer, weights_dir)``: a Hugging Face directory is loaded in float32 (no remote code);
    a model object is used as it is (``weights_dir`` None)."""
    if isinstance(model, (str, os.PathLike)):
        from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                                  AutoTokenizer)

        path = os.fspath(model)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"model: '{path}' is not a Hugging Face model directory (no config.json).")
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        architectures = config.architectures or []
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
        classifier = any(a.endswith(CLASSIFIER_SUFFIX) for a in architectures)
        headed = [a for a in architectures if not (causal or classifier) and not a.endswith("Model")]
        if headed:  # AutoModel would silently drop the task head
            raise ValueError(f"model: '{path}' is a {headed[0]}; slim_model distills causal language models, "
                             f"sequence classifiers and bare encoders (sentence embeddings) only: other task heads "
                             f"are not supported.")
        loader = AutoModelForCausalLM if causal else AutoModelForSequenceClassification if classifier else AutoModel
        teacher = loader.from_pretrained(path, dtype=torch.float32, trust_remote_code=False).eval()
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        return teacher, tokenizer, path
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be a Hugging Face model directory or a transformers model, not "
                        f"{type(model).__name__}.")
    if tokenizer is None:
        raise ValueError("tokenizer is required when model is a model object (it is saved with the slim model).")
    return model, tokenizer, None


class _Search:
    """The candidates of one run: their sizes, fillings and proxy scores."""

    def __init__(self, teacher, family, objective, config, calibration, held_out, weights_dir):
        self.teacher, self.family, self.objective, self.config = teacher, family, objective, config
        self.held_out, self.weights_dir, self.calibration = held_out, weights_dir, calibration
        self.layer_maps = weakref.WeakKeyDictionary()  # student -> {its layer: the teacher layer it came from}
        self.space = families.search_space(family, teacher.config, prune_hidden=True)
        self.pattern = layer_pattern(teacher)
        self.prune_config = (PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"])
                             .add_blocks_params(self.pattern, "auto")
                             .set_importance("activation", dataset=calibration, model=teacher))
        self.prune_config.measurement_cache = {}
        self.latency = None
        if config.budget_kind == "latency":
            self.latency = Latency(teacher, held_out.select(range(min(4, len(held_out)))), objective.inputs)
        self.count = lru_cache(maxsize=None)(self._count)

    def blank(self, arch, device=None):
        """A randomly initialised model of ``arch`` (``device`` "meta": shapes only; default: the teacher's)."""
        small_config = families.candidate_config(self.family, self.teacher.config, self.space, arch)
        return families.build(type(self.teacher), small_config, device or next(self.teacher.parameters()).device)

    def _count(self, arch):
        if self.latency is not None:
            return self.latency.microseconds(self.teacher if arch == self.space.dense else self.blank(arch))
        return families.model_size(self.blank(arch, "meta"), self.config.budget_kind)

    def candidates(self):
        """The spread of architectures within the budget. Raises ValueError when none meets it."""
        config = self.config
        target = config.budget
        for _ in range(LATENCY_ROUNDS if self.latency is not None else 1):
            found, smallest = search.candidates(self.space, self.count, target, config.tolerance, config.align)
            if not found:
                raise ValueError(search.describe_unreachable(config.budget, smallest, config.budget_kind))
            picked = search.spread(found, config.max_candidates)
            logger.info("Architecture search: %d architectures meet the budget, %d are scored.", len(found),
                        len(picked))
            if self.latency is None:
                return picked
            measured = self._timed(picked)
            kept = [c for c in measured if abs(c.fraction - config.budget) <= config.tolerance]
            if kept:
                return kept
            # the prediction was off (e.g. a fixed cost the one- and two-layer models misjudge): aim where the
            # measured ratios say the budget lies, and search again
            target *= config.budget / statistics.median(c.fraction for c in measured)
        timings = ", ".join(f"{c.architecture.label()} {c.fraction:.2f}" for c in measured)
        raise ValueError(f"no candidate's measured latency is within {config.tolerance} of budget {config.budget} "
                         f"(latency ratios to the teacher: {timings}); widen SlimConfig.tolerance, or run on a "
                         f"quieter machine.")

    def _timed(self, picked):
        """``picked`` with ``fraction`` (and ``size``, in microseconds) measured against the teacher."""
        dense = self.count(self.space.dense)
        timed = []
        for candidate in picked:
            ratio = self.latency.ratio(self.blank(candidate.architecture))
            timed.append(dataclasses.replace(candidate, size=round(ratio * dense), fraction=ratio))
        return timed

    def sizes(self, student):
        """``(dense size, student size)`` under the budget kind (latency: measured, in microseconds)."""
        if self.latency is not None:
            dense = self.count(self.space.dense)
            return dense, round(self.latency.ratio(student) * dense)
        kind = self.config.budget_kind
        return families.model_size(self.teacher, kind), families.model_size(student, kind)

    def build(self, arch):
        """A student of ``arch`` filled from the teacher (in the teacher's device, float32)."""
        student = self.blank(arch).eval()
        prune_model_weight(student, self.prune_config, self.weights_dir)
        self.layer_maps[student] = {int(k): int(v) for k, v in self.prune_config.report["layers"].items()}
        self.objective.prepare(self.teacher, student, self.calibration)
        return student

    def hidden(self, student):
        """``(layer map, weight)`` of the hidden-state losses of ``student``."""
        return self.layer_maps[student], self.config.hidden_weight

    def proxy(self, student):
        student.eval()
        return self.objective.proxy(self.teacher, student, self.held_out)


def _plan(config, steps, seed_offset=0):
    return TrainPlan(steps=steps, batch_size=config.batch_size, micro_batch_size=config.micro_batch_size,
                     learning_rate=config.learning_rate, weight_decay=config.weight_decay,
                     warmup_steps=math.ceil(config.warmup_fraction * steps), max_grad_norm=config.max_grad_norm,
                     temperature=config.temperature,
                     eval_every=config.eval_every or max(steps // 10, 1), checkpoint_every=config.checkpoint_every,
                     seed=config.seed + seed_offset)


@contextlib.contextmanager
def _weights_dir(teacher, weights_dir):
    """The teacher's weights on disk for ``prune_model_weight``: its directory, or a temporary copy."""
    if weights_dir is not None:
        yield weights_dir
        return
    with tempfile.TemporaryDirectory(prefix="msmodelslim-teacher-") as folder:
        teacher.save_pretrained(folder)
        yield folder


def run_search(search_state, config, train):
    """Score every candidate, distill the ``top_k`` best briefly, return ``(rows, winner arch, winner student,
    metric of the winner before training)``."""
    rows = []
    for candidate in search_state.candidates():
        student = search_state.build(candidate.architecture)
        proxy = search_state.proxy(student)
        rows.append({"architecture": candidate.architecture.to_dict(), "label": candidate.architecture.label(),
                     "size": candidate.size, "fraction": candidate.fraction, "proxy": proxy})
        logger.info("Candidate %s (%.1f%%): proxy %.4f", candidate.architecture.label(), 100 * candidate.fraction,
                    proxy)
        del student
    rows.sort(key=lambda row: row["proxy"])
    tokens_per_step = config.batch_size * train.ids.shape[1]
    short_steps = max(1, round(config.search_fraction * config.train_tokens / tokens_per_step))
    best = None
    for rank, row in enumerate(rows[:config.top_k]):
        arch = search.Architecture(**row["architecture"])
        student = search_state.build(arch)
        row["metric_pruned"] = search_state.objective.metric(search_state.teacher, student, search_state.held_out)
        Distillation(search_state.teacher, student, search_state.objective, _plan(config, short_steps, rank + 1),
                     train, search_state.held_out, name=f"short distillation {rank + 1}/{config.top_k}",
                     hidden=search_state.hidden(student)).run()
        row["proxy_after"] = search_state.proxy(student)
        row["short_steps"] = short_steps
        logger.info("Candidate %s after %d steps: proxy %.4f", arch.label(), short_steps, row["proxy_after"])
        if best is None or row["proxy_after"] < best[0]["proxy_after"]:
            best = (row, student)
    winner, student = best
    winner["chosen"] = True
    return rows, search.Architecture(**winner["architecture"]), student, winner["metric_pruned"]


@torch.no_grad()
def latency_ratio(teacher, student, batch, inputs, repeats=5):
    """Median time of one forward of ``student`` over the teacher's on ``batch`` (interleaved, after a warm-up)."""
    times = {"teacher": [], "student": []}
    models = (("teacher", teacher), ("student", student))
    for _ in range(repeats + 1):
        for name, model in models:
            was_training = model.training
            model.eval()
            device = next(model.parameters()).device
            start = time.perf_counter()
            model(**inputs(batch, device))
            times[name].append(time.perf_counter() - start)
            model.train(was_training)
    return statistics.median(times["student"][1:]) / statistics.median(times["teacher"][1:])


def _identity(model):
    """What names the teacher in the checkpoint settings: its directory, or its class and size."""
    if isinstance(model, (str, os.PathLike)):
        return os.path.realpath(os.fspath(model))
    return f"{type(model).__name__} with {sum(p.numel() for p in model.parameters())} parameters"


def slim_model_torch(model, config, data, tokenizer, checkpoint_dir, resume):
    """Backend of :func:`msmodelslim.common.slim.slim_model` (arguments validated). A teacher given as a model
    object gets its train/eval mode back at the end."""
    was_training = getattr(model, "training", False)
    try:
        return _slim(model, config, data, tokenizer, checkpoint_dir, resume)
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)


def _checked_teacher(model, config, tokenizer):
    """``(teacher, tokenizer, weights_dir, family, objective)``, after the checks that need the teacher.

    Raises:
        ValueError: an unknown family, an objective the model cannot serve, a sequence longer than its positions, a
            batch that the processes cannot share evenly.
    """
    teacher, tokenizer, weights_dir = load_teacher(model, tokenizer)
    teacher.eval()
    distributed.init_from_environment(next(teacher.parameters()).device)
    if config.batch_size % distributed.world():
        raise ValueError(f"SlimConfig.batch_size ({config.batch_size}) must be a multiple of the number of processes "
                         f"({distributed.world()}).")
    family = families.family_of(teacher)
    if family is None:
        model_type = getattr(teacher.config, "model_type", type(teacher).__name__)
        raise ValueError(f"slim_model does not know the architecture '{model_type}'; supported model types: "
                         f"{', '.join(families.supported_types())}.")
    objective = objective_for(config.objective, teacher)
    longest = families.max_sequence_length(teacher.config)
    if longest is not None and config.seq_len > longest:
        raise ValueError(f"SlimConfig.seq_len {config.seq_len} is longer than the {longest} positions of "
                         f"{type(teacher).__name__} (max_position_embeddings); lower seq_len.")
    return teacher, tokenizer, weights_dir, family, objective


def _token_data(tokenizer, config, data, objective, num_labels=None):
    """``(train rows, held-out rows, calibration batches, steps)``.

    Raises:
        ValueError: labelled data for a model that is not a sequence classifier, or a label outside its classes.
    """
    if slim_data.is_labelled(data):
        if objective.name != "classification":
            raise ValueError(f"data with labels needs a sequence classifier (objective 'classification'), not "
                             f"objective '{objective.name}'; give a list of texts.")
        slim_data.check_records(data)
        outside = next((r["label"] for r in data if num_labels is not None and r["label"] >= num_labels), None)
        if outside is not None:
            raise ValueError(f"data: label {outside} is outside the model's {num_labels} classes (0 to "
                             f"{num_labels - 1}).")
        objective.use_labels(config.label_weight)
    train_texts, held_texts = slim_data.split_texts(data)
    rows_of = slim_data.packed_rows if objective.name == "lm" else slim_data.padded_rows
    steps = max(1, math.ceil(config.train_tokens / (config.batch_size * config.seq_len)))
    train = rows_of(tokenizer, train_texts, config.seq_len, steps * config.batch_size, "the training text")
    held_out = rows_of(tokenizer, held_texts, config.seq_len, config.eval_samples, "the held-out text")
    count = min(config.calib_samples, len(train))
    calibration = [{k: v for k, v in train.select(range(i, min(i + 4, count))).items() if k != "labels"}
                   for i in range(0, count, 4)]
    return train, held_out, calibration, steps


def _chosen_student(search_state, checkpoints, config, train):
    """``(candidate rows, architecture, student, metric before training)``: from the checkpoints of an interrupted
    run when its search was done, else by running the search (its result is then checkpointed)."""
    teacher = search_state.teacher
    if checkpoints.has(SEARCH_FILE):
        with open(checkpoints.path(SEARCH_FILE), encoding="utf-8") as handle:
            found = json.load(handle)
        arch = search.Architecture(**found["architecture"])
        student = search_state.blank(arch)
        student.load_state_dict(torch.load(checkpoints.path(START_FILE), map_location="cpu", weights_only=True))
        search_state.layer_maps[student] = {int(k): v for k, v in found["layer_map"].items()}
        logger.info("Resuming: the search chose %s.", arch.label())
        return found["candidates"], arch, student, found["metric_pruned"]
    with _weights_dir(teacher, search_state.weights_dir) as folder:
        search_state.weights_dir = folder
        rows, arch, student, metric_pruned = run_search(search_state, config, train)
    checkpoints.write(START_FILE, student.state_dict())
    checkpoints.write(SEARCH_FILE, {"architecture": arch.to_dict(), "candidates": rows, "metric_pruned": metric_pruned,
                                    "layer_map": search_state.layer_maps[student]})
    return rows, arch, student, metric_pruned


def _slim(model, config, data, tokenizer, checkpoint_dir, resume):
    checkpoints = Checkpoints(checkpoint_dir, {"model": _identity(model), "config": config.to_dict(),
                                               "data": data if isinstance(data, str) else f"{len(data)} texts"},
                              resume)
    torch.manual_seed(config.seed)
    teacher, tokenizer, weights_dir, family, objective = _checked_teacher(model, config, tokenizer)
    train, held_out, calibration, steps = _token_data(tokenizer, config, data, objective,
                                                      getattr(teacher.config, "num_labels", None))
    search_state = _Search(teacher, family, objective, config, calibration, held_out, weights_dir)
    dense_metric = objective.metric(teacher, teacher, held_out)
    rows, arch, student, metric_pruned = _chosen_student(search_state, checkpoints, config, train)
    torch.manual_seed(config.seed)  # the same start whether or not the search ran in this process
    objective.prepare(teacher, student, calibration)  # from the chosen weights alone, whether resumed or not
    history = Distillation(teacher, student, objective, _plan(config, steps), train, held_out,
                           checkpoint=(checkpoints, FINAL_FILE) if checkpoint_dir else None,
                           name="distillation", hidden=search_state.hidden(student)).run(resume=resume)
    student.eval()
    dense_size, slim_size = search_state.sizes(student)
    metrics = {
        "objective": objective.name, "metric": objective.metric_name,
        "dense": dense_metric, "pruned": metric_pruned, "distilled": objective.metric(teacher, student, held_out),
        "budget": config.budget, "budget_kind": config.budget_kind,
        "dense_size": dense_size, "slim_size": slim_size,
        "dense_params": families.model_size(teacher, "params"), "slim_params": families.model_size(student, "params"),
        "latency_ratio": latency_ratio(teacher, student, held_out.select(range(min(4, len(held_out)))),
                                       objective.inputs),
        "train_tokens": history.tokens, "steps": len(history.loss),
    }
    metrics["fraction"] = metrics["slim_size"] / dense_size
    dense_arch = families.dense_architecture(family, teacher.config)
    return SlimResult(student, tokenizer, arch, dense_arch, rows, metrics, history.to_dict(), config.to_dict(),
                      projection=getattr(objective, "projections", {}).get(student))
