"""``DistillDualModels``: a teacher and a student run side by side, with the distillation loss between them."""
import inspect
import itertools

import torch
from torch import nn

from msmodelslim.common.knowledge_distill.knowledge_distill import check_shared_parameters
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


def _check_distinct(teacher, student):
    """Refuse a teacher that is the student, or a student with no parameter of its own (the teacher is frozen, so
    such a student could not learn); warn when they share some parameters (those stay frozen with the teacher).

    Raises:
        ValueError: the same model twice, or every student parameter also belongs to the teacher.
    """
    teacher, student = _unwrap(teacher), _unwrap(student)
    if teacher is student:
        raise ValueError("get_distill_model: the teacher and the student are the same object; pass two different "
                         "models (the teacher is frozen, so the student could not learn).")
    teacher_ids = {id(p) for p in teacher.parameters()}
    student_params = dict(student.named_parameters())
    shared = [name for name, param in student_params.items() if id(param) in teacher_ids]
    check_shared_parameters(shared, len(student_params))


class _ModelState:
    """What setting up distillation changes on a model, kept by reference (no copy) so that it can be put back
    exactly: train/eval modes, the parameter and buffer objects with their data, grads and ``requires_grad``."""

    def __init__(self, model):
        self.modules = [(m, m.training, dict(m._parameters), dict(m._buffers)) for m in model.modules()]
        self.params = [(p, p.data, p.grad, p.requires_grad)
                       for _, _, params, _ in self.modules for p in params.values() if p is not None]

    def restore(self):
        """Put every recorded module attribute and parameter back."""
        for module, training, params, buffers in self.modules:
            module.training = training
            module._parameters.clear()
            module._parameters.update(params)
            module._buffers.clear()
            module._buffers.update(buffers)
        for param, data, grad, flag in self.params:
            param.data = data
            param.grad = grad
            param.requires_grad_(flag)


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
    (or :meth:`trainable_parameters` when adaptors are used). :meth:`get_student_model` or :meth:`close` ends its
    use: the hooks are removed and the teacher's ``requires_grad`` flags given back."""

    def __init__(self, teacher, student, config):
        """Check the config against the models, then freeze the teacher, set the train modes, place the hooks and
        cast the teacher (``set_teacher_dtype``). On any error the teacher and the student are left exactly as
        they were.

        Raises:
            ValueError: the same model as teacher and student, an unknown loss or module name, adaptor widths that
                cannot be inferred.
            TypeError: a loss class that does not accept its ``func_param``.
        """
        _check_distinct(teacher, student)
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
        self._teacher_grad_flags = {}
        self._closed_by = None
        registry = dict(LOSSES)
        registry.update(config.custom_loss_func)
        self.inter_matches = [self._build_match("inter", i, m, registry) for i, m in enumerate(config.inter_matches)]
        self.output_matches = [self._build_match("output", i, m, registry)
                               for i, m in enumerate(config.output_matches)]
        self._check_modules()
        self._build_adaptors()
        self._prepare_models(config.teacher_dtype)
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
        for match in self.inter_matches + self.output_matches:
            request = match.config.get("adaptor")
            if not request:
                continue
            inter = match.kind == "inter"
            if request is True:
                widths = (_width_of(student_modules[match.config["s_module"]]),
                          _width_of(teacher_modules[match.config["t_module"]])) if inter else (None, None)
                if None in widths:
                    raise ValueError(f"{match.where}: cannot infer the widths for the adaptor; give them as "
                                     f"'adaptor': [student_width, teacher_width].")
            else:
                widths = tuple(int(width) for width in request)
            match.adaptor_key = f"{match.kind}{match.index}"
            # the adaptor reads the student's tensor: same dtype and device, or the first matmul fails
            where = student_modules[match.config["s_module"]] if inter else self.student_model
            dtype, device = _float_placement(where, self.student_model)
            self.adaptors[match.adaptor_key] = nn.Linear(*widths, device=device, dtype=dtype)

    def _prepare_models(self, teacher_dtype):
        """Freeze the teacher, set the train modes, place the hooks, and cast the teacher last (the only step that
        allocates); on any error (Ctrl-C included) undo all of it exactly and re-raise."""
        states = [_ModelState(self.teacher_model), _ModelState(self.student_model)]
        try:
            self._teacher_grad_flags = {p: p.requires_grad for p in self.teacher_model.parameters()}
            self._freeze_teacher()
            self.student_model.train()
            self.teacher_model.train(self.train_teacher)
            self._attach_hooks()
            if teacher_dtype is not None:
                self.teacher_model.to(teacher_dtype)
        except BaseException:
            self._remove_handles()
            for state in states:
                state.restore()
            raise

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

    def _remove_handles(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def remove_hooks(self):
        """Remove every hook this wrapper placed on the teacher and the student, and give the teacher's parameters
        back their ``requires_grad`` flags; the next forward puts both back. After :meth:`close` or
        :meth:`get_student_model` it changes nothing."""
        if self._closed_by is None:
            self._release()

    def _release(self):
        self._remove_handles()
        for param, flag in self._teacher_grad_flags.items():
            param.requires_grad_(flag)

    def _close(self, by):
        """Release the models for good: later calls neither run nor touch the teacher's flags again."""
        if self._closed_by is None:
            self._release()
            self._closed_by = by

    def _check_open(self):
        """Raises RuntimeError: the wrapper was closed (its hooks are gone and the teacher is no longer frozen)."""
        if self._closed_by is not None:
            raise RuntimeError(f"this DistillDualModels was closed by {self._closed_by}; create a new one with "
                               f"get_distill_model.")

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
        ``(distill_loss, student_outputs, teacher_outputs)``.

        Raises:
            RuntimeError: the wrapper was closed by :meth:`get_student_model` or :meth:`close`.
            ValueError: an output index or key that does not exist, a matched module that did not run, or tensors
                of different shapes without an adaptor.
        """
        self._check_open()
        self._attach_hooks()  # after remove_hooks()
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
            adaptor = self.adaptors[match.adaptor_key]
            if student.shape[-1:] != (adaptor.in_features,):
                raise ValueError(f"{match.where}: the adaptor maps width {adaptor.in_features} to "
                                 f"{adaptor.out_features}, but the student tensor has shape {tuple(student.shape)}; "
                                 f"give 'adaptor': [{student.shape[-1] if student.dim() else 1}, teacher_width].")
            student = adaptor(student)
        if student.shape != teacher.shape and not _width_free(match):
            hint = "" if match.adaptor_key else (
                " Add \"adaptor\": True to the match to learn a linear map." if match.kind == "inter" else
                " Add \"adaptor\": [student_width, teacher_width] to the match to learn a linear map.")
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
        """The student (the same object), with this wrapper's hooks removed and the teacher's ``requires_grad``
        flags given back; adaptors are not part of it. The wrapper cannot run afterwards (RuntimeError)."""
        self._close("get_student_model()")
        return self.student_model

    def close(self):
        """Remove the hooks and give the teacher's flags back, as :meth:`get_student_model` (the context-manager
        exit does the same)."""
        self._close("close()")

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc):
        self.close()

    def to_ddp(self, **ddp_kwargs):
        """This model wrapped in ``DistributedDataParallel`` for multi-process training: the student's and the
        adaptors' gradients are averaged across processes; the frozen teacher is left out.

        Raises:
            RuntimeError: the wrapper was closed.
        """
        self._check_open()
        return nn.parallel.DistributedDataParallel(self, **ddp_kwargs)


def _width_free(match):
    """Losses that compare student and teacher tensors of different widths by construction (MMD)."""
    return all(type(loss).__name__ == "MMD" for _, loss, *_ in match.losses)


def _float_placement(module, fallback):
    """``(dtype, device)`` of the first floating-point parameter or buffer of ``module`` (else of ``fallback``, else
    the defaults)."""
    for model in (module, _unwrap(fallback)):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype, tensor.device
    return torch.get_default_dtype(), torch.device("cpu")


def _first_device(outputs):
    if isinstance(outputs, torch.Tensor):
        return outputs.device
    values = outputs.values() if isinstance(outputs, dict) else outputs
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")
