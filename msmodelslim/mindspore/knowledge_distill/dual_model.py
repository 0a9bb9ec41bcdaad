"""``DistillDualModels`` for MindSpore: teacher and student Cells side by side, returning one training loss.

The student is a "network with loss": output ``i`` (``set_hard_label(w, i)``) is its own task loss. The dual
model's ``construct(*inputs)`` runs the teacher (no gradient), then the student, and returns
``student_outputs[i] * w + distill_loss * (1 - w)`` (``output_replace_idx = -1``: ``distill_loss`` alone), where
``distill_loss = sum over matches and losses of func_weight * loss(student part, teacher part[, T])``. Any MindSpore
training step that minimises a Cell's output trains it: ``nn.TrainOneStepCell``, ``mindspore.value_and_grad``,
``mindspore.train.Model``, in PyNative and GRAPH_MODE. Intermediate matches go through wrapped sub-cells
(``taps.py``).
"""
import mindspore
from mindspore import nn, ops
from mindspore import dtype as mstype
from mindspore import Parameter, Tensor

from msmodelslim.common.knowledge_distill.knowledge_distill import check_shared_parameters
from msmodelslim.mindspore.knowledge_distill.losses import LOSSES
from msmodelslim.mindspore.knowledge_distill.taps import (CellState, MatchLoss, StudentTap, TeacherTap, WeightedLoss,
                                                           ZeroTie, after, as_tuple, is_tap, parent_and_key, put_child,
                                                           select)
from msmodelslim.utils.checks import is_int
from msmodelslim.utils.logging import logger

HARD_LABEL_MESSAGE = 'must use method "set_hard_label" to set weight and index'


class _Match:
    """One soft label as validated: where to read the two tensors, its losses and (intermediate) its shape."""

    def __init__(self, kind, index, config, terms, builtin_only):
        self.kind = kind
        self.config = config
        self.name = f"{kind}_match{index}"
        api = "add_inter_soft_label" if kind == "inter" else "add_output_soft_label"
        self.where = f"{self.name} ({api} config)"
        self.loss = MatchLoss(terms, self.where, builtin_only)
        self.shape = None


class _OutputMatch(nn.Cell):
    """The loss of one output soft label, between ``student_outputs[s]`` and ``teacher_outputs[t]``."""

    def __init__(self, match):
        super().__init__(auto_prefix=False)
        self.loss = match.loss
        self.s_index = match.config["s_output_idx"]
        self.t_index = match.config["t_output_idx"]
        self.s_where = "s_output_idx in " + match.where
        self.t_where = "t_output_idx in " + match.where

    def construct(self, student_outputs, teacher_outputs):
        return self.loss(select(student_outputs, self.s_index, self.s_where),
                         select(teacher_outputs, self.t_index, self.t_where))


# ------------------------------------------------------------------------------------------------- validation
def _check_distinct(teacher, student):
    """Raises ValueError: the same Cell twice, or a student all of whose parameters belong to the teacher."""
    if teacher is student:
        raise ValueError("get_distill_model: the teacher and the student are the same object; pass two different "
                         "models (the teacher is frozen, so the student could not learn).")
    teacher_ids = {id(p) for p in teacher.get_parameters()}
    student_params = list(student.get_parameters())
    shared = [p.name for p in student_params if id(p) in teacher_ids]
    check_shared_parameters(shared, len(student_params))
    for side, model in (("teacher", teacher), ("student", student)):
        if any(is_tap(cell) for _, cell in model.cells_and_names()):
            raise ValueError(f"get_distill_model: the {side} is already wrapped by a DistillDualModels; call its "
                             f"get_student_model() first.")


def _check_hard_label(config):
    """Raises ValueError: ``set_hard_label`` was never called, or the index is below -1; TypeError: not an int."""
    index = config.output_replace_idx
    if index is None or not config.hard_label_set:
        raise ValueError(HARD_LABEL_MESSAGE)
    if not is_int(index):
        raise TypeError(f"output_replace_idx must be int, not {type(index).__name__}.")
    if index < -1:
        raise ValueError(f"output_replace_idx must be -1 (the distillation loss alone) or an index >= 0, got {index}.")


def _build_terms(match, registry):
    """``(WeightedLoss cells, every loss is built-in)`` of one match.

    Raises:
        ValueError: an unknown loss name.
        TypeError: a loss class that does not accept its ``func_param``.
    """
    terms, builtin_only = [], True
    for entry in match["loss_func"]:
        name = entry["func_name"]
        if name not in registry:
            raise ValueError(f'The func name "{name}" not exist. please check config.')
        loss = registry[name]
        builtin_only = builtin_only and name in LOSSES and loss is LOSSES[name]
        if isinstance(loss, type):
            try:
                loss = loss(*entry["func_param"])
            except TypeError:
                logger.error("Please check loss_param and loss_name: %s(%s).", name, entry["func_param"])
                raise
        terms.append(WeightedLoss(loss, entry["func_weight"], entry["temperature"]))
    return terms, builtin_only


def _check_indices(match):
    """Raises ValueError: a str output index (MindSpore outputs are tuples) or an adaptor (PyTorch only)."""
    for key in ("t_output_idx", "s_output_idx"):
        if not is_int(match.config[key]):
            raise ValueError(f'{match.where}: MindSpore outputs are indexed by position; config["{key}"] = '
                             f'{match.config[key]!r} is not an int.')
    if match.config.get("adaptor"):
        raise ValueError(f"{match.where}: 'adaptor' is supported with PyTorch models only.")


def _check_shape(match):
    """Validate the inter match's optional ``shape`` and return it as a tuple (or None).

    Raises:
        TypeError: not a list or tuple of ints.
        ValueError: a negative size; missing in GRAPH_MODE.
    """
    shape = match.config.get("shape")
    if shape is None:
        if mindspore.get_context("mode") == mindspore.GRAPH_MODE:
            raise ValueError(f'{match.where}: config in "add_inter_soft_label" must has key: "shape" in GRAPH_MODE '
                             f'(the shape of t_module[t_output_idx]; in PyNative mode it is inferred).')
        return None
    if not isinstance(shape, (list, tuple)) or not all(is_int(size) for size in shape):
        raise TypeError(f'{match.where}: "shape" must be a list of int, not {shape!r}.')
    if any(size < 0 for size in shape):
        raise ValueError(f'{match.where}: "shape" must hold sizes >= 0, got {list(shape)}.')
    return tuple(shape)


def _check_modules(match, teacher_cells, student_cells):
    """Raises ValueError: a module name that is not a sub-cell of its model (the whole model included)."""
    for key, side, cells in (("t_module", "teacher", teacher_cells), ("s_module", "student", student_cells)):
        name = match.config[key]
        if name not in cells:
            raise ValueError(f'The module name: "{name}" is not in the {side} model! Please check config')
        if name == "":
            raise ValueError(f'{match.where}: "{key}" must name a sub-cell, not the whole {side} model.')


def _plan(teacher, student, config):
    """Validate everything against the models without changing them; returns ``(inter, output)`` matches."""
    _check_distinct(teacher, student)
    _check_hard_label(config)
    if config.teacher_dtype is not None:
        raise TypeError("set_teacher_dtype is for PyTorch teachers; a MindSpore teacher is never cast.")
    registry = dict(LOSSES)
    registry.update(config.custom_loss_func)
    teacher_cells, student_cells = dict(teacher.cells_and_names()), dict(student.cells_and_names())
    inter = []
    for index, config_match in enumerate(config.inter_matches):
        match = _Match("inter", index, config_match, *_build_terms(config_match, registry))
        _check_indices(match)
        _check_modules(match, teacher_cells, student_cells)
        match.shape = _check_shape(match)
        inter.append(match)
    output = []
    for index, config_match in enumerate(config.output_matches):
        match = _Match("output", index, config_match, *_build_terms(config_match, registry))
        _check_indices(match)
        output.append(match)
    return inter, output


# ------------------------------------------------------------------------------------------------- the Cell
class DistillDualModels(nn.Cell):
    """Teacher + student; ``construct(*inputs)`` returns ``student_outputs[i] * w + distill_loss * (1 - w)``.

    Build the optimizer from ``trainable_params()`` (the teacher's parameters are frozen and never among them) and
    train with ``nn.TrainOneStepCell(dual, optimizer)``. ``distill_loss`` (a Parameter) holds the last distillation
    loss. :meth:`get_student_model` ends its use.
    """

    def __init__(self, teacher, student, config):
        """Validate the config against the models, then freeze the teacher, set the train modes and wrap the matched
        sub-cells. On any error the teacher and the student are left exactly as they were.

        Raises:
            ValueError / TypeError: see ``get_distill_model``.
        """
        super().__init__(auto_prefix=False)
        inter, output = _plan(teacher, student, config)
        self.hard_label_loss_weight = float(config.hard_label_loss_weight)
        self.output_replace_idx = config.output_replace_idx
        self.train_teacher = bool(config.train_teacher)
        self.closed = False
        self.closed_message = ""
        # weight of the distillation loss in the output, which InjectLoss must reproduce in the backward pass
        self.distill_coef = 1.0 if self.output_replace_idx == -1 else 1.0 - self.hard_label_loss_weight
        self.output_losses = nn.CellList([_OutputMatch(match) for match in output])
        self.distill_loss = Parameter(Tensor(0.0, mstype.float32), name="distill.distill_loss", requires_grad=False)
        self.tie = ZeroTie()
        self._states = [CellState(teacher), CellState(student)]
        self._wraps = []
        try:
            self._set_up(teacher, student, inter)
        except BaseException:
            self._undo_wraps()
            for state in self._states:
                state.restore()
            raise
        logger.info("Distillation model built (MindSpore): %d intermediate and %d output soft label(s).",
                    len(inter), len(output))

    def _set_up(self, teacher, student, inter):
        for param in teacher.get_parameters():
            param.requires_grad = False
        teacher.set_train(self.train_teacher)
        student.set_train(True)
        loss_values = [self._wrap(teacher, student, match) for match in inter]
        self.inter_loss_values = tuple(loss_values)
        self.has_inter = bool(loss_values)
        self.teacher_model = teacher
        self.student_model = student
        for prefix, state in (("teacher_model.", self._states[0]), ("student_model.", self._states[1])):
            for param, name, _, _ in state.params:
                param.name = prefix + name

    def _wrap(self, teacher, student, match):
        """Replace the match's teacher and student sub-cells by taps; returns the student loss buffer."""
        suffix = match.name
        shape = () if match.shape is None else match.shape  # PyNative: resized on the first eager call
        teacher_value = Parameter(ops.zeros(shape, mstype.float32), name=f"distill.{suffix}.teacher_value",
                                  requires_grad=False)
        loss_value = Parameter(Tensor(0.0, mstype.float32), name=f"distill.{suffix}.loss_value", requires_grad=False)
        t_parent, t_key = parent_and_key(teacher, match.config["t_module"])
        s_parent, s_key = parent_and_key(student, match.config["s_module"])
        t_cell, s_cell = t_parent._cells[t_key], s_parent._cells[s_key]  # pylint: disable=protected-access
        t_tap = TeacherTap(t_cell, match.config["t_output_idx"], teacher_value, match)
        s_tap = StudentTap(s_cell, match.config["s_output_idx"], match.loss, teacher_value, loss_value,
                           self.distill_coef, match.where)
        self._wraps.append((t_parent, t_key, t_cell))
        put_child(t_parent, t_key, t_tap)
        self._wraps.append((s_parent, s_key, s_cell))
        put_child(s_parent, s_key, s_tap)
        return loss_value

    def _undo_wraps(self):
        """Put the original sub-cells back, last wrapped first."""
        while self._wraps:
            parent, key, cell = self._wraps.pop()
            put_child(parent, key, cell)

    # ------------------------------------------------------------------------------------------------- use
    def construct(self, *args):
        """Run the teacher (no gradient) and the student on ``args``; return the training loss.

        Raises:
            RuntimeError: after :meth:`get_student_model` or :meth:`close`.
            ValueError: an output index out of range, tensors of different shapes for a built-in loss, a teacher
                tensor that does not fit its ``shape`` (in GRAPH_MODE while compiling).
        """
        if self.closed:
            raise RuntimeError(self.closed_message)
        teacher_outputs = ops.stop_gradient(as_tuple(self.teacher_model(*args)))
        # GRAPH_MODE drops a call whose result is unused, side effects included: the student's inputs depend on the
        # teacher's outputs, so the teacher (and its taps' writes) always runs, and runs first
        student_outputs = as_tuple(self.student_model(*after(args, teacher_outputs)))
        distill = ops.zeros((), mstype.float32)
        for match in self.output_losses:
            distill = distill + match(student_outputs, teacher_outputs)
        if self.has_inter:
            for value in self.inter_loss_values:
                distill = distill + value
            for output in student_outputs:
                if isinstance(output, Tensor):
                    distill = distill + self.tie(output)
        ops.assign(self.distill_loss, ops.stop_gradient(distill))
        if self.output_replace_idx == -1:
            return distill
        hard = select(student_outputs, self.output_replace_idx, "output_replace_idx (set_hard_label)")
        return hard * self.hard_label_loss_weight + distill * (1 - self.hard_label_loss_weight)

    def __call__(self, *args, **kwargs):
        """``Cell.__call__``, refused once closed (a graph compiled before would otherwise run).

        Raises:
            RuntimeError: after :meth:`get_student_model` or :meth:`close`.
        """
        if self.closed:
            raise RuntimeError(self.closed_message)
        return super().__call__(*args, **kwargs)

    def add_flags_recursive(self, **flags):
        """As ``Cell.add_flags_recursive`` (which ``set_train`` and ``mindspore.train.Model`` use), but the teacher
        stays in eval mode unless ``set_teacher_train()`` was called."""
        super().add_flags_recursive(**flags)
        if "training" in flags and "teacher_model" in self._cells:
            self.teacher_model.add_flags_recursive(training=bool(flags["training"]) and self.train_teacher)
        return self

    def get_student_model(self):
        """The student (the same object) with its original sub-cells and parameter names back; the teacher gets its
        sub-cells, names and ``requires_grad`` flags back. Afterwards this dual model raises RuntimeError when
        called (a training step compiled before, in GRAPH_MODE, keeps the graph it was compiled with, which still
        distills correctly)."""
        self._close("get_student_model()")
        return self.student_model

    def close(self):
        """Give the models back as :meth:`get_student_model` does."""
        self._close("close()")

    def _close(self, by):
        if self.closed:
            return
        self._undo_wraps()
        for state in self._states:
            state.restore_params()
        self.closed = True
        self.closed_message = (f"this DistillDualModels was closed by {by}: its sub-cell wrappers are gone and the "
                               f"teacher is no longer frozen; create a new one with get_distill_model.")
