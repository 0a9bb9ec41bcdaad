"""``DistillationTrainer``: train the student of a ``DistillDualModels`` with the Hugging Face ``Trainer``
(batching, schedules, logging, ``torchrun`` multi-process training) and save the student alone."""
import os

import torch
from transformers import Trainer

from msmodelslim.pytorch.knowledge_distill.dual_model import DistillDualModels


def _unwrap(model):
    while hasattr(model, "module") and not isinstance(model, DistillDualModels):
        model = model.module
    return model


class DistillationTrainer(Trainer):
    """A ``Trainer`` over a ``DistillDualModels``.

    The loss is ``distill_model.get_total_loss(hard_loss)`` when the batch has ``labels`` (the hard loss is
    ``hard_loss_fn(student_outputs, labels)``, by default the cross-entropy of the student's ``logits``), else the
    distillation loss alone. The optimizer trains the student and the adaptors; ``save_model`` saves the student
    (``save_pretrained`` when it has one).
    """

    def __init__(self, distill_model, hard_loss_fn=None, **kwargs):
        if not isinstance(distill_model, DistillDualModels):
            raise TypeError(f"distill_model must be a DistillDualModels, not {type(distill_model).__name__}.")
        if kwargs.get("args") is not None:
            # the wrapper's forward takes *args/**kwargs: every column of the batch must reach it
            kwargs["args"].remove_unused_columns = False
        super().__init__(model=distill_model, **kwargs)
        self.hard_loss_fn = hard_loss_fn

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        distill_loss, student_outputs, _ = model(**inputs)
        if labels is None:
            loss = distill_loss
        else:
            if self.hard_loss_fn is not None:
                hard = self.hard_loss_fn(student_outputs, labels)
            else:
                logits = student_outputs.logits if hasattr(student_outputs, "logits") else student_outputs
                hard = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
            loss = _unwrap(model).get_total_loss(hard)
        return (loss, student_outputs) if return_outputs else loss

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            params = _unwrap(self.model).trainable_parameters()
            self.optimizer = torch.optim.AdamW(params, lr=self.args.learning_rate,
                                               weight_decay=self.args.weight_decay)
        return self.optimizer

    def save_model(self, output_dir=None, _internal_call=False):
        output_dir = output_dir or self.args.output_dir
        if not self.is_world_process_zero():
            return
        os.makedirs(output_dir, exist_ok=True)
        student = _unwrap(self.model).student_model
        student = getattr(student, "module", student)
        if hasattr(student, "save_pretrained"):
            student.save_pretrained(output_dir)
        else:
            torch.save(student.state_dict(), os.path.join(output_dir, "student.pt"))
