"""Intermediate outputs without hooks, for PyNative and GRAPH_MODE alike.

GRAPH_MODE runs no Python hooks and cuts gradients at Python attribute writes, so a matched sub-cell is *replaced*
by a wrapper ("tap") that runs the original sub-cell and then:

* teacher side (:class:`TeacherTap`): writes ``output[t_output_idx]`` into a non-trainable float32 ``Parameter``
  (a fixed shape in a compiled graph: the match's ``shape``; when running eagerly the buffer follows the tensor);
* student side (:class:`StudentTap`): computes the match's loss between ``output[s_output_idx]`` and that buffer
  *inside the student*, writes its value into a scalar ``Parameter`` that the dual model adds to its output, and
  returns the sub-cell's output through :class:`InjectLoss`, an identity whose backward also sends the constant
  ``coef`` (the loss's weight in the dual model's output) into the loss. The loss's gradient therefore reaches the
  student's parameters exactly as if the loss had been returned, assuming the training step differentiates the
  dual model's output with sensitivity 1 (``TrainOneStepCell``, ``value_and_grad``, ``mindspore.train.Model``
  without loss scaling): a custom ``bprop`` cannot read a Parameter in GRAPH_MODE, so the sensitivity cannot be
  passed to it.

A compiled graph calls ``construct``; running eagerly (PyNative) calls ``__call__``, which the taps override where
PyNative differs (a buffer that changes shape; a custom ``bprop`` that takes tensors, not a tuple).

What this asks of the models: a matched sub-cell runs once per forward pass, and some element of its output feeds
the model's outputs (a compiled graph drops a call whose result is unused, and the backward pass reaches the
injected loss only through that output).

:class:`CellState` records what the set-up changes (children, train flags, parameter names and ``requires_grad``)
so that a failed set-up, ``get_student_model`` and ``close`` put it back.
"""
from mindspore import nn, ops
from mindspore import dtype as mstype
from mindspore import Tensor

_MISSING = object()


def as_tuple(outputs):
    """A tuple or list as it is; anything else as a one-element tuple."""
    if isinstance(outputs, (tuple, list)):
        return outputs
    return (outputs,)


def select(outputs, index, where):
    """``outputs[index]`` (a bare tensor counts as a one-element tuple).

    Raises:
        ValueError: ``index`` is out of range; ``where`` names the match (raised while compiling in GRAPH_MODE).
    """
    values = as_tuple(outputs)
    if index >= len(values):
        raise ValueError(where + " out of range: index " + str(index) + ", the output has " + str(len(values))
                         + " element(s).")
    return values[index]


def after(values, dependency):
    """``values`` (a tuple) whose tensors are computed only once ``dependency`` is (``ops.depend``)."""
    result = ()
    for value in values:
        if isinstance(value, Tensor):
            value = ops.depend(value, dependency)
        result = result + (value,)
    return result


class InjectLoss(nn.Cell):
    """Identity on ``x`` (a tensor or a tuple); in the backward pass ``loss`` receives the gradient ``coef`` (see the
    module docstring). It wraps the sub-cell's whole output, so that the backward pass reaches it as soon as one
    element of that output is used downstream. For compiled graphs (PyNative's custom bprop takes no tuple)."""

    def __init__(self, coef):
        super().__init__(auto_prefix=False)
        self.coef = float(coef)

    def construct(self, x, loss):
        return x

    def bprop(self, x, loss, out, dout):
        return dout, ops.ones_like(loss) * self.coef


class InjectLossEager(nn.Cell):
    """:class:`InjectLoss` for PyNative: ``construct(loss, *tensors)`` returns ``tensors`` (GRAPH_MODE refuses a
    ``bprop`` with ``*args``)."""

    def __init__(self, coef):
        super().__init__(auto_prefix=False)
        self.coef = float(coef)

    def construct(self, loss, *tensors):
        return tensors

    def bprop(self, loss, *args):
        dout = args[-1]
        if isinstance(dout, Tensor):  # PyNative gives a one-tensor output's gradient bare
            dout = (dout,)
        return (ops.ones_like(loss) * self.coef,) + tuple(dout)


class ZeroTie(nn.Cell):
    """A float32 zero that depends on ``x`` with a zero gradient: it keeps the student's outputs on the path to the
    dual model's output, so that the backward pass reaches the :class:`InjectLoss` cells inside the student even when
    nothing else of the output depends on the student (``output_replace_idx = -1`` and no output soft label)."""

    def __init__(self):
        super().__init__(auto_prefix=False)

    def construct(self, x):
        return ops.depend(ops.zeros((), mstype.float32), x)

    def bprop(self, x, out, dout):
        return (ops.zeros_like(x),)


class WeightedLoss(nn.Cell):
    """``weight * loss(student, teacher[, temperature])`` (the temperature is passed only when set)."""

    def __init__(self, loss, weight, temperature):
        super().__init__(auto_prefix=False)
        self.loss = loss
        self.weight = float(weight)
        self.temperature = temperature
        self.has_temperature = temperature is not None

    def construct(self, student, teacher):
        if self.has_temperature:
            return self.loss(student, teacher, self.temperature) * self.weight
        return self.loss(student, teacher) * self.weight


class MatchLoss(nn.Cell):
    """The sum of a match's weighted losses (a float32 zero when it has none); checks the shapes when every loss is
    a built-in one (custom losses may compare tensors of different shapes)."""

    def __init__(self, terms, where, check_shapes):
        super().__init__(auto_prefix=False)
        self.terms = nn.CellList(terms)
        self.where = where
        self.check_shapes = check_shapes

    def construct(self, student, teacher):
        if self.check_shapes and student.shape != teacher.shape:
            raise ValueError(self.where + ": the student tensor has shape " + str(student.shape)
                             + " and the teacher tensor " + str(teacher.shape) + ".")
        total = ops.zeros((), mstype.float32)
        for term in self.terms:
            total = total + term(student, teacher)
        return total


class TeacherTap(nn.Cell):
    """Runs the teacher's sub-cell and keeps ``output[index]`` (float32, no gradient) in ``buffer``."""

    def __init__(self, cell, index, buffer, match):
        super().__init__(auto_prefix=False)
        self.cell = cell
        self.index = index
        self.buffer = buffer
        self.where = "t_output_idx in " + match.where
        self.match_where = match.where
        self.shape_known = match.shape is not None

    def construct(self, *args):
        outputs = self.cell(*args)
        part = select(outputs, self.index, self.where)
        if not self.shape_known:
            raise ValueError(self.match_where + ': config in "add_inter_soft_label" must has key: "shape" to '
                             'compile a graph (GRAPH_MODE or mindspore.jit); give it, or run one PyNative step '
                             'first so that it is inferred.')
        if part.shape != self.buffer.shape:
            raise ValueError(self.match_where + ": the teacher tensor has shape " + str(part.shape)
                             + " but its buffer (\"shape\", or the shape seen by the last PyNative step) has "
                             + str(self.buffer.shape) + ".")
        written = ops.assign(self.buffer, ops.stop_gradient(part).astype(mstype.float32))
        return ops.depend(outputs, written)

    def __call__(self, *args, **kwargs):
        # Reached only when running eagerly (PyNative): a compiled graph calls construct. The buffer follows the
        # tensor's shape, so that ``shape`` is optional here and a smaller last batch works.
        outputs = self.cell(*args, **kwargs)
        part = select(outputs, self.index, self.where)
        self.buffer.set_data(ops.stop_gradient(part).astype(mstype.float32))
        self.shape_known = True
        return outputs


class StudentTap(nn.Cell):
    """Runs the student's sub-cell, computes the match's loss against the teacher buffer, keeps its value in
    ``loss_value`` and passes its gradient on through :class:`InjectLoss`."""

    def __init__(self, cell, index, match_loss, teacher_value, loss_value, coef, where):
        super().__init__(auto_prefix=False)
        self.cell = cell
        self.index = index
        self.match_loss = match_loss
        self.teacher_value = teacher_value
        self.loss_value = loss_value
        self.inject = InjectLoss(coef)
        self.inject_eager = InjectLossEager(coef)
        self.where = "s_output_idx in " + where

    def construct(self, *args):
        outputs = self.cell(*args)
        return self.inject(outputs, self.match_value(outputs))

    def match_value(self, outputs):
        """The match's loss on ``outputs``, also written into ``loss_value``."""
        part = select(outputs, self.index, self.where)
        loss = self.match_loss(part, ops.stop_gradient(self.teacher_value))
        ops.assign(self.loss_value, ops.stop_gradient(loss))
        return loss

    def __call__(self, *args, **kwargs):
        # Reached only when running eagerly (PyNative), whose custom bprop takes tensors rather than a tuple.
        outputs = self.cell(*args, **kwargs)
        loss = self.match_value(outputs)
        if not isinstance(outputs, (tuple, list)):
            return self.inject_eager(loss, outputs)[0]
        positions = [i for i, value in enumerate(outputs) if isinstance(value, Tensor)]
        carried = self.inject_eager(loss, *[outputs[i] for i in positions])
        result = list(outputs)
        for position, value in zip(positions, carried):
            result[position] = value
        return type(outputs)(result)


def is_tap(cell):
    """True for the wrappers of this module."""
    return isinstance(cell, (TeacherTap, StudentTap))


def parent_and_key(model, name):
    """``(parent cell, child key)`` of the sub-cell ``name`` of ``model`` (a name from ``cells_and_names()``)."""
    parent_name, _, key = name.rpartition(".")
    parent = dict(model.cells_and_names())[parent_name] if parent_name else model
    return parent, key


def put_child(parent, key, cell):
    """Replace the child ``key`` of ``parent`` by ``cell`` without renaming any parameter (``Cell.__setattr__``
    would prefix them); ``SequentialCell`` keeps a second list of its children, refreshed here."""
    parent._cells[key] = cell  # pylint: disable=protected-access
    if isinstance(parent, nn.SequentialCell):
        object.__setattr__(parent, "cell_list", list(parent._cells.values()))  # pylint: disable=protected-access


class CellState:
    """What setting up distillation changes on a Cell tree, kept by reference (no copy) so that it can be put back
    exactly: each cell's children and train flags, each parameter's name, ``requires_grad`` and ``is_init``."""

    def __init__(self, model):
        # pylint: disable=protected-access
        self.cells = [(cell, dict(cell._cells), cell.__dict__.get("training", _MISSING),
                       dict(cell.__dict__.get("_func_graph_flags", {})) if "_func_graph_flags" in cell.__dict__
                       else _MISSING, cell._phase,
                       cell.__dict__.get("cell_list", _MISSING))
                      for _, cell in model.cells_and_names()]
        self.params = [(param, param.name, param.requires_grad, param.is_init) for param in model.get_parameters()]

    def restore(self):
        """Put every recorded child, flag and parameter attribute back."""
        for cell, children, training, flags, phase, cell_list in self.cells:
            cell._cells.clear()  # pylint: disable=protected-access
            cell._cells.update(children)  # pylint: disable=protected-access
            if cell_list is not _MISSING:
                object.__setattr__(cell, "cell_list", cell_list)
            if training is not _MISSING:
                object.__setattr__(cell, "training", training)
            if flags is _MISSING:
                cell.__dict__.pop("_func_graph_flags", None)
            else:
                object.__setattr__(cell, "_func_graph_flags", flags)
            object.__setattr__(cell, "_phase", phase)
        self.restore_params()

    def restore_params(self):
        """Put the parameters' names, ``requires_grad`` and ``is_init`` back."""
        for param, name, requires_grad, is_init in self.params:
            param.name = name
            param.requires_grad = requires_grad
            param.is_init = is_init
