"""``DistillDualModels``: a teacher and a student run side by side, with the distillation loss between them."""
import inspect

import torch
from torch import nn

from msmodelslim.pytorch.knowledge_distill.losses import LOSSES
from msmodelslim.utils.logging import logger


def _unwrap(model):
    """The module inside DistributedDataParallel / DataParallel wrappers (whose names start with ``module.``)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def select_output(outputs, index, where):
    """``outputs[index]``: an int position in a tuple/list or in a Hugging Face output's non-None fields, or a str
    key of a Hugging Face output. A bare tensor counts as a one-element tuple.

    Raises:
        ValueError: the index or key does not exist; ``where`` names the match.
    """
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    if isinstance(index, str):
        if isinstance(outputs, dict) and outputs.get(index) is not None:
            return outputs[index]
        available = [k for k, v in outputs.items() if v is not None] if isinstance(outputs, dict) else "none"
        raise ValueError(f"{where}: the output has no field '{index}' (fields: {available}).")
    values = outputs.to_tuple() if hasattr(outputs, "to_tuple") else tuple(outputs)
    if not 0 <= index < len(values):
        raise ValueError(f"{where} out of range: index {index}, the output has {len(values)} element(s).")
    return values[index]


def _width_of(module):
    """The output width of a module: that of its last Linear/LayerNorm/Embedding (registration order), or None."""
    width = None
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            width = sub.out_features
        elif isinstance(sub, nn.LayerNorm):
            width = sub.normalized_shape[-1]
        elif isinstance(sub, nn.Embedding):
            width = sub.embedding_dim
        elif type(sub).__name__.endswith("RMSNorm") and getattr(sub, "weight", None) is not None:
            width = sub.weight.shape[0]
    return width


class _Match:
    """One soft label: where to read the two tensors, the weighted losses, and an optional adaptor."""

    def __init__(self, kind, index, config, losses):
        self.kind = kind
        self.index = index
        self.config = config
        self.losses = losses  # [(name, module, weight, temperature, takes_mask)]
        self.name = f"{kind}_match{index}"
        self.adaptor_key = None

    @property
    def where(self):
        api = "add_inter_soft_label" if self.kind == "inter" else "add_output_soft_label"
        return f"{self.name} ({api} config)"


class DistillDualModels(nn.Module):
    """Teacher + student. ``forward(*args, **kwargs)`` runs both on the same inputs and returns
    ``(distill_loss, student_outputs, teacher_outputs)``; build the optimizer from ``student_model.parameters()``
    (or :meth:`trainable_parameters` when adaptors are used)."""

    def __init__(self, teacher, student, config):
        super().__init__()
        self.teacher_model = teacher
        self.student_model = student
        self.config = config
        self.hard_label_loss_weight = config.hard_label_loss_weight
        self.train_teacher = config.train_teacher
        self.distill_loss = None
        self.adaptors = nn.ModuleDict()
        self._captured = {"teacher": {}, "student": {}}
        self._handles = []
        registry = dict(LOSSES)
        registry.update(config.custom_loss_func)
        self.inter_matches = [self._build_match("inter", i, m, registry) for i, m in enumerate(config.inter_matches)]
        self.output_matches = [self._build_match("output", i, m, registry)
                               for i, m in enumerate(config.output_matches)]
        self._check_modules()
        self._build_adaptors()
        if config.teacher_dtype is not None:
            teacher.to(config.teacher_dtype)
        self._teacher_grad_flags = {p: p.requires_grad for p in teacher.parameters()}
        self._freeze_teacher()
        student.train()
        teacher.train(self.train_teacher)
        self._attach_hooks()
        logger.info("Distillation model built: %d intermediate and %d output soft label(s).",
                    len(self.inter_matches), len(self.output_matches))

    # ------------------------------------------------------------------------------------------------- set-up
    @staticmethod
    def _build_match(kind, index, match, registry):
        losses = []
        for entry in match["loss_func"]:
            name = entry["func_name"]
            if name not in registry:
                raise ValueError(f'The func name "{name}" not exist. please check config.')
            loss = registry[name]
            if isinstance(loss, type):
                try:
                    loss = loss(*entry["func_param"])
                except TypeError:
                    logger.error("Please check loss_param and loss_name: %s(%s).", name, entry["func_param"])
                    raise
            takes_mask = "mask" in inspect.signature(loss.forward).parameters
            losses.append((name, loss, entry["func_weight"], entry["temperature"], takes_mask))
        return _Match(kind, index, match, losses)

    def _check_modules(self):
        teacher_modules = dict(_unwrap(self.teacher_model).named_modules())
        student_modules = dict(_unwrap(self.student_model).named_modules())
        for match in self.inter_matches:
            if match.config["t_module"] not in teacher_modules:
                raise ValueError(f'The module "{match.config["t_module"]}" not in teacher model. Please check config.')
            if match.config["s_module"] not in student_modules:
                raise ValueError(f'The module "{match.config["s_module"]}" not in student model. Please check config.')

    def _build_adaptors(self):
        teacher_modules = dict(_unwrap(self.teacher_model).named_modules())
        student_modules = dict(_unwrap(self.student_model).named_modules())
        for match in self.inter_matches:
            request = match.config.get("adaptor")
            if not request:
                continue
            if request is True:
                widths = (_width_of(student_modules[match.config["s_module"]]),
                          _width_of(teacher_modules[match.config["t_module"]]))
                if None in widths:
                    raise ValueError(f"{match.where}: cannot infer the widths for the adaptor; give them as "
                                     f"'adaptor': [student_width, teacher_width].")
            else:
                widths = tuple(request)
            match.adaptor_key = f"inter{match.index}"
            device = next(_unwrap(self.student_model).parameters()).device
            self.adaptors[match.adaptor_key] = nn.Linear(*widths).to(device)

    def _attach_hooks(self):
        if self._handles:
            return
        for side, model, key in (("teacher", self.teacher_model, "t_module"), ("student", self.student_model,
                                                                                "s_module")):
            modules = dict(_unwrap(model).named_modules())
            for match in self.inter_matches:
                def hook(module, inputs, output, _side=side, _name=match.name):
                    self._captured[_side][_name] = output

                self._handles.append(modules[match.config[key]].register_forward_hook(hook))

    def remove_hooks(self):
        """Remove every hook this wrapper placed on the teacher and the student, and give the teacher's parameters
        back their ``requires_grad`` flags."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for param, flag in self._teacher_grad_flags.items():
            param.requires_grad_(flag)

    def _freeze_teacher(self):
        """The teacher never learns: no optimizer or DistributedDataParallel sees its parameters as trainable."""
        for param in self._teacher_grad_flags:
            param.requires_grad_(False)

    # ------------------------------------------------------------------------------------------------- use
    def trainable_parameters(self):
        """The student's parameters and the adaptors': what the optimizer should train."""
        return list(self.student_model.parameters()) + list(self.adaptors.parameters())

    def forward(self, *args, **kwargs):
        """Run the teacher (no gradients) and the student on the same inputs; return
        ``(distill_loss, student_outputs, teacher_outputs)``."""
        self._attach_hooks()
        self._freeze_teacher()
        self.teacher_model.train(self.train_teacher)
        self._captured = {"teacher": {}, "student": {}}
        with torch.no_grad():
            teacher_outputs = self.teacher_model(*args, **kwargs)
        student_outputs = self.student_model(*args, **kwargs)
        mask = kwargs.get("attention_mask")  # a positional mask is model-specific; only the keyword is used
        loss = None
        for match in self.inter_matches:
            term = self._match_loss(match, self._captured["student"].get(match.name),
                                    self._captured["teacher"].get(match.name), mask)
            loss = term if loss is None else loss + term
        for match in self.output_matches:
            term = self._match_loss(match, student_outputs, teacher_outputs, mask)
            loss = term if loss is None else loss + term
        if loss is None:
            loss = torch.zeros((), device=_first_device(student_outputs))
        self.distill_loss = loss
        return loss, student_outputs, teacher_outputs

    def _match_loss(self, match, student_value, teacher_value, mask):
        if student_value is None or teacher_value is None:
            raise ValueError(f"{match.where}: the module did not run in this forward pass.")
        student = select_output(student_value, match.config["s_output_idx"], f"s_output_idx in {match.where}")
        teacher = select_output(teacher_value, match.config["t_output_idx"], f"t_output_idx in {match.where}")
        if match.adaptor_key is not None:
            student = self.adaptors[match.adaptor_key](student)
        if student.shape != teacher.shape and not _width_free(match):
            hint = "" if match.adaptor_key else " Add \"adaptor\": True to the match to learn a linear map."
            raise ValueError(f"{match.where}: the student tensor has shape {tuple(student.shape)} and the teacher "
                             f"tensor {tuple(teacher.shape)}.{hint}")
        teacher = teacher.to(student.dtype) if teacher.is_floating_point() else teacher
        total = None
        for _, loss, weight, temperature, takes_mask in match.losses:
            extra = {}
            if takes_mask and mask is not None and tuple(mask.shape) == tuple(student.shape[:-1]):
                extra["mask"] = mask
            value = loss(student, teacher, temperature, **extra) if temperature else loss(student, teacher, **extra)
            total = weight * value if total is None else total + weight * value
        return total

    def get_total_loss(self, hard_label_loss):
        """``distill_loss * (1 - w) + hard_label_loss * w`` with ``w`` the hard-label weight (default 0.5)."""
        weight = self.hard_label_loss_weight
        return self.distill_loss * (1 - weight) + hard_label_loss * weight

    def get_student_model(self):
        """The student (the same object), with this wrapper's hooks removed; adaptors are not part of it."""
        self.remove_hooks()
        return self.student_model

    def close(self):
        """Remove the hooks (the context-manager exit does the same)."""
        self.remove_hooks()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def to_ddp(self, **ddp_kwargs):
        """This model wrapped in ``DistributedDataParallel`` for multi-process training: the student's and the
        adaptors' gradients are averaged across processes; the frozen teacher is left out."""
        return nn.parallel.DistributedDataParallel(self, **ddp_kwargs)


def _width_free(match):
    """Losses that compare student and teacher tensors of different widths by construction (MMD)."""
    return all(type(loss).__name__ == "MMD" for _, loss, *_ in match.losses)


def _first_device(outputs):
    if isinstance(outputs, torch.Tensor):
        return outputs.device
    values = outputs.values() if isinstance(outputs, dict) else outputs
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")
