"""Distillation of a slim student from its teacher, resumable exactly.

Built on :class:`~msmodelslim.pytorch.knowledge_distill.dual_model.DistillDualModels`: AdamW, linear warm-up then
cosine decay to a tenth of the peak rate, gradient accumulation over micro-batches, gradient clipping, bf16
autocast on CUDA (float32 elsewhere). Every ``checkpoint_every`` steps the student, optimizer, scheduler, step and
RNG states are written atomically (temporary file, then rename); the batches are a function of the step alone, so
a run resumed from a checkpoint ends with the same weights as an uninterrupted one. SIGINT/SIGTERM finish the
current step, write a checkpoint, then stop as the signal asks (a second signal stops at once).
"""
import contextlib
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from msmodelslim.common.knowledge_distill.knowledge_distill import get_distill_model
from msmodelslim.pytorch.slim import distributed
from msmodelslim.pytorch.slim.data import batch_at
from msmodelslim.pytorch.slim.objective import add_hidden_state_losses
from msmodelslim.utils.logging import logger

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class TrainPlan:
    steps: int
    batch_size: int
    micro_batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_steps: int
    max_grad_norm: float
    temperature: float
    eval_every: int
    checkpoint_every: int
    seed: int


@dataclass
class History:
    """Loss per step and the held-out metric at each evaluation ``[(step, value)]``."""

    loss: list = field(default_factory=list)
    evaluations: list = field(default_factory=list)
    tokens: int = 0

    def to_dict(self):
        return asdict(self)


def schedule(plan):
    """The learning-rate factor at a step: linear warm-up, then cosine decay to 0.1."""

    def factor(step):
        if step < plan.warmup_steps:
            return (step + 1) / plan.warmup_steps
        progress = (step - plan.warmup_steps) / max(plan.steps - plan.warmup_steps, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


class _StopRequest:
    """Hold SIGINT/SIGTERM until the current step is done; a second one is delivered at once."""

    def __init__(self):
        self.signal = None
        self.previous = {}

    def __enter__(self):
        for number in STOP_SIGNALS:
            try:
                self.previous[number] = signal.signal(number, self._record)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def _record(self, signum, frame):
        if self.signal is not None:
            self.deliver(signum)
        self.signal = signum

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        return False

    def deliver(self, signum=None):
        """Act as the handler in place before would have for the held signal."""
        signum = signum or self.signal
        handler = self.previous.get(signum)
        if callable(handler):
            handler(signum, None)
        raise KeyboardInterrupt()


class Distillation:
    """One distillation run of ``student`` (changed in place) towards ``teacher`` on ``train`` rows."""

    def __init__(self, teacher, student, objective, plan, train, held_out, checkpoint=None, name="distill",
                 hidden=None):
        """``checkpoint``: ``(store, name)``, where ``store.write(name, state)`` writes atomically and
        ``store.path(name)`` reads back; None: no checkpoints. ``hidden``: ``(layer_map, weight)`` adds the
        hidden-state losses of :func:`~msmodelslim.pytorch.slim.objective.add_hidden_state_losses`."""
        self.teacher, self.student, self.objective = teacher, student, objective
        self.hidden = hidden
        self.plan, self.train, self.held_out = plan, train, held_out
        self.checkpoint = checkpoint
        self.name = name
        self.device = next(student.parameters()).device

    def run(self, resume=False):
        """Train for ``plan.steps`` steps (from the checkpoint when ``resume`` and one exists); return the
        :class:`History`.

        Raises:
            KeyboardInterrupt: stopped by SIGINT/SIGTERM, after the checkpoint of the last finished step.
        """
        config = self.objective.distill_config(self.plan.temperature, self.student)
        if self.hidden is not None and self.hidden[1] > 0:
            add_hidden_state_losses(config, self.teacher, self.student, *self.hidden)
        dual = get_distill_model(self.teacher, self.student, config)
        try:
            return self._run(dual, resume)
        finally:
            dual.close()

    def _run(self, dual, resume):
        plan = self.plan
        self.objective.bind(dual, self.student)
        self.trained = dual.trainable_parameters()  # the student's, and the adaptors' where widths differ
        optimizer = torch.optim.AdamW(self.trained, lr=plan.learning_rate, weight_decay=plan.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(plan))
        history, step = History(), 0
        if resume and self.checkpoint and os.path.isfile(self.checkpoint[0].path(self.checkpoint[1])):
            step, history = self._load(dual, optimizer, scheduler)
            logger.info("%s: resumed at step %d of %d.", self.name, step, plan.steps)
        model = dual.to_ddp() if distributed.active() else dual
        bar = tqdm(total=plan.steps, initial=step, desc=self.name, unit="step",
                   disable=not logger.isEnabledFor(20) or distributed.rank() != 0)
        started, done_here = time.perf_counter(), 0
        try:
            with _StopRequest() as stop:
                while step < plan.steps:
                    loss, tokens = self._step(dual, model, optimizer, scheduler, step)
                    step += 1
                    done_here += tokens
                    history.loss.append(loss)
                    history.tokens += tokens
                    if plan.eval_every and (step % plan.eval_every == 0 or step == plan.steps):
                        history.evaluations.append([step, self._evaluate()])
                    rate = done_here / max(time.perf_counter() - started, 1e-9)
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:.0f}")
                    bar.update(1)
                    stopping = distributed.any_process(stop.signal is not None)
                    if self.checkpoint and (step % plan.checkpoint_every == 0 or stopping):
                        self._save(dual, step, history, optimizer, scheduler)
                    if stopping:
                        logger.info("%s: stopped at step %d%s.", self.name, step,
                                    "; checkpoint written" if self.checkpoint else "")
                        stop.deliver(stop.signal or signal.SIGINT)
        finally:
            bar.close()
        return history

    def _step(self, dual, model, optimizer, scheduler, step):
        """One optimizer step on batch ``step`` (this process's rows of it) through ``model`` (``dual`` or its DDP
        wrapper); returns the batch's mean loss and its token count, over every process."""
        plan = self.plan
        batch = distributed.shard(batch_at(self.train, step, plan.batch_size, plan.seed))
        rows = batch["input_ids"].shape[0]
        micro = plan.micro_batch_size or rows
        self.student.train()
        total = 0.0
        starts = range(0, rows, micro)
        for start in starts:
            part = {k: v[start:start + micro] for k, v in batch.items()}
            last = start == starts[-1]
            sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                    loss, student_outputs, _ = model(**self.objective.inputs(part, self.device))
                    if hasattr(self.objective, "total_loss"):
                        loss = self.objective.total_loss(dual, student_outputs, part)
                (loss * (part["input_ids"].shape[0] / rows)).backward()
            total += loss.item() * part["input_ids"].shape[0] / rows
        loss = distributed.mean(total)
        if not math.isfinite(loss):  # before the step: the weights stay those of the last good step
            raise ValueError(f"{self.name}: the loss is {loss} at step {step + 1}; lower the learning rate or the "
                             f"loss weights (e.g. hidden_weight).")
        if plan.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.trained, plan.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss, distributed.total(int(batch["attention_mask"].sum()))

    def _evaluate(self):
        was_training = self.student.training
        self.student.eval()
        try:
            return self.objective.metric(self.teacher, self.student, self.held_out)
        finally:
            self.student.train(was_training)

    def _save(self, dual, step, history, optimizer, scheduler):
        state = {"step": step, "student": self.student.state_dict(), "adaptors": dual.adaptors.state_dict(),
                 "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "history": history.to_dict(),
                 "rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        store, name = self.checkpoint
        store.write(name, state)  # rank 0 writes, the others wait

    def _load(self, dual, optimizer, scheduler):
        store, name = self.checkpoint
        state = torch.load(store.path(name), map_location="cpu", weights_only=True)
        self.student.load_state_dict(state["student"])
        dual.adaptors.load_state_dict(state.get("adaptors", {}))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return state["step"], History(**state["history"])
