"""Knowledge distillation: ``KnowledgeDistillConfig`` and ``get_distill_model``.

Usage (as documented by msModelSlim)::

    from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig, get_distill_model
    distill_config = KnowledgeDistillConfig()
    distill_config.add_output_soft_label({
        "t_output_idx": 1, "s_output_idx": 1,
        "loss_func": [{"func_name": "KDCrossEntropy", "func_weight": 1, "temperature": 1}]})
    distill_model = get_distill_model(teacher_model, student_model, distill_config)
    loss, student_outputs, teacher_outputs = distill_model(input_ids, segment_ids, input_mask)
    student_model = distill_model.get_student_model()

With MindSpore ``nn.Cell`` models (the student is a "network with loss")::

    distill_config.set_hard_label(0.5, 0)        # required: student output 0 holds its own loss
    distill_model = get_distill_model(teacher_cell, student_cell, distill_config)
    train_step = mindspore.nn.TrainOneStepCell(distill_model, optimizer)   # the dual model returns one tensor
    loss = train_step(input_ids, labels)
    student_cell = distill_model.get_student_model()

This module imports neither framework: the backend follows the teacher's type and is imported only then.
"""
import copy
import math
import numbers
import sys

from msmodelslim.utils.checks import is_int
from msmodelslim.utils.logging import logger

DEFAULT_HARD_LABEL_WEIGHT = 0.5


def _type_name(value):
    return type(value).__name__


def _loaded_class(module_name, attribute_path):
    """The class ``module_name.attribute_path`` when that framework is already imported, else None (a model of a
    framework that was never imported cannot exist, so nothing is imported here)."""
    value = sys.modules.get(module_name)
    for attribute in attribute_path.split("."):
        value = getattr(value, attribute, None) if value is not None else None
    return value if isinstance(value, type) else None


def _framework_of(model):
    """``"torch"`` for a torch ``nn.Module``, ``"mindspore"`` for a MindSpore ``nn.Cell``, else None."""
    for framework, base in (("torch", _loaded_class("torch", "nn.Module")),
                            ("mindspore", _loaded_class("mindspore", "nn.Cell"))):
        if base is not None and isinstance(model, base):
            return framework
    return None


def _is_loss_of(framework, loss):
    """A loss instance, or a loss class, of ``framework`` (``"torch"``: ``nn.Module``; ``"mindspore"``:
    ``nn.Cell``)."""
    base = _loaded_class("torch", "nn.Module") if framework == "torch" else _loaded_class("mindspore", "nn.Cell")
    if base is None:
        return False
    return isinstance(loss, base) or (isinstance(loss, type) and issubclass(loss, base))


def _check_index(config, key):
    value = config[key]
    if isinstance(value, str):
        return
    if not is_int(value):
        raise TypeError(f'config["{key}"] must be int, not {_type_name(value)}.')
    if value < 0:
        raise ValueError(f'config["{key}"] = {value} is smaller than 0.')


def _is_real(value):
    """A real number (int, float, numpy scalar) that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_func_weight(entry):
    """``func_weight`` must be a finite number > 0.

    Raises:
        ValueError: missing or zero (the original's "loss_func must have func_weight"), negative, NaN or infinite.
        TypeError: not an int or float (a str, a bool, a tensor ...).
    """
    weight = entry.get("func_weight")
    missing = weight is None or (isinstance(weight, (str, bytes, bool)) and not weight)
    if missing or (_is_real(weight) and weight == 0):
        raise ValueError("loss_func must have func_weight")
    if not _is_real(weight):
        raise TypeError(f"loss_func func_weight must be int or float, not {_type_name(weight)} ({weight!r}).")
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"loss_func func_weight must be a finite number > 0, got {weight!r}.")


def _check_temperature(entry):
    """Return the entry's temperature: ``None`` when missing or None, else a finite number > 0.

    Raises:
        TypeError: not an int or float (a bool included).
        ValueError: zero, negative, NaN or infinite.
    """
    temperature = entry.get("temperature")
    if temperature is None:
        return None
    if not _is_real(temperature):
        raise TypeError(f"temperature must be int or float, not {_type_name(temperature)}.")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"Value of temperature is invalid: {temperature!r} (a finite number > 0 is required).")
    return temperature


def _check_func_param(entry):
    """Return the entry's ``func_param`` list (``[]`` when missing or empty).

    Raises:
        TypeError: not a list.
        ValueError: a NaN or infinite number in it.
    """
    func_param = entry.get("func_param")
    if not func_param:
        return []
    if not isinstance(func_param, list):
        raise TypeError("func_param must be list")
    for value in func_param:
        if _is_real(value) and not math.isfinite(value):
            raise ValueError(f"loss_func func_param must hold finite numbers, got {func_param!r}.")
    return func_param


def _normalise_loss_funcs(loss_funcs):
    """Validate the ``loss_func`` entries and return normalised copies (the caller's dicts stay untouched).

    Raises:
        TypeError: ``loss_funcs`` not a list of dicts; a non-numeric ``func_weight`` or ``temperature``; a
            ``func_param`` that is not a list.
        ValueError: a missing ``func_name``; a missing, zero, negative or non-finite ``func_weight``; a zero,
            negative or non-finite ``temperature``; a non-finite number in ``func_param``.
    """
    if not isinstance(loss_funcs, list):
        raise TypeError(f"loss_func must be a list of dicts, not {_type_name(loss_funcs)}.")
    normalised = []
    for entry in loss_funcs:
        if not isinstance(entry, dict):
            raise TypeError(f"Each loss_func entry must be a dict, not {_type_name(entry)}.")
        entry = dict(entry)
        if not entry.get("func_name"):
            raise ValueError("loss_func must have func_name")
        _check_func_weight(entry)
        entry["temperature"] = _check_temperature(entry)
        entry["func_param"] = _check_func_param(entry)
        normalised.append(entry)
    return normalised


class KnowledgeDistillConfig:
    """What to distill: soft labels between outputs and between intermediate modules, the hard-label weight, and
    custom losses. Every method returns the config, so calls chain."""

    def __init__(self):
        self.train_teacher = False
        self.model_parallel = False
        self.hard_label_loss_weight = DEFAULT_HARD_LABEL_WEIGHT
        self._output_replace_idx = 0
        self.hard_label_set = False  # MindSpore requires set_hard_label (or output_replace_idx assigned)
        self.inter_matches = []
        self.output_matches = []
        self.custom_loss_func = {}
        self.teacher_dtype = None
        self.inter_match_keys = ["t_module", "s_module", "t_output_idx", "s_output_idx", "loss_func"]
        self.output_match_keys = ["t_output_idx", "s_output_idx", "loss_func"]

    @property
    def output_replace_idx(self):
        """Index of the student output holding its hard-label loss (MindSpore); -1: the distillation loss alone."""
        return self._output_replace_idx

    @output_replace_idx.setter
    def output_replace_idx(self, index):
        self._output_replace_idx = index
        self.hard_label_set = True

    def set_hard_label(self, weight, index):
        """Weight of the hard-label loss in ``get_total_loss`` (0 < weight < 1) and the index of the student output
        holding it (used by MindSpore).

        Raises:
            TypeError: ``weight`` not a float or ``index`` not an int.
            ValueError: ``weight`` outside (0, 1) or ``index`` negative.
        """
        if not isinstance(weight, float):
            raise TypeError(f"weight must be float, not {_type_name(weight)}.")
        if not 0 < weight < 1:
            raise ValueError(f"weight must be between 0 and 1, but input {weight}")
        if not is_int(index):
            raise TypeError(f"index must be int, not {_type_name(index)}.")
        if index < 0:
            raise ValueError(f"index must be greater than 0, but input {index}")
        self.hard_label_loss_weight = weight
        self.hard_label_set = True
        if index:
            self.output_replace_idx = index
        return self

    def _check_match(self, config, keys, kind):
        if not isinstance(config, dict):
            raise TypeError(f"config must be dict, not {_type_name(config)}.")
        missing = [key for key in keys if key not in config]
        if missing:
            raise ValueError(f"config must have key: {missing}")
        for key in ("t_output_idx", "s_output_idx"):
            _check_index(config, key)
        match = dict(config)
        match["loss_func"] = _normalise_loss_funcs(config["loss_func"])
        adaptor = match.get("adaptor", False)
        if adaptor is not False and adaptor is not True and adaptor is not None and not (
                isinstance(adaptor, (list, tuple)) and len(adaptor) == 2
                and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in adaptor)):
            raise ValueError(f"{kind} 'adaptor' must be True or [student_width, teacher_width], got {adaptor!r}.")
        return match

    def add_output_soft_label(self, config):
        """Match the model outputs: ``{"t_output_idx", "s_output_idx", "loss_func"}``. Indices are ints (positions
        in a tuple or in a Hugging Face output's non-None fields) or str keys (``"logits"``). Optional
        ``"adaptor": [student_width, teacher_width]`` learns a linear map from the student's last dimension to the
        teacher's (PyTorch), e.g. for the hidden states of a student of a smaller hidden size.

        Raises:
            TypeError / ValueError: as the original for missing keys and bad indices or loss entries; also a
                ``func_weight`` that is not a finite number > 0, a ``temperature`` that is not None or a finite
                number > 0, a NaN/inf in ``func_param`` (see ``_normalise_loss_funcs``).
        """
        self.output_matches.append(self._check_match(config, self.output_match_keys, "add_output_soft_label"))
        return self

    def add_inter_soft_label(self, config):
        """Match the outputs of intermediate modules: keys of :meth:`add_output_soft_label` plus ``t_module`` and
        ``s_module`` (names from ``named_modules()``, or ``cells_and_names()`` for MindSpore); optional
        ``"adaptor": True`` (or ``[student_width, teacher_width]``) learns a linear map from the student's width to
        the teacher's (PyTorch); optional ``"shape"``: the shape of the teacher tensor (MindSpore, required in
        GRAPH_MODE, checked by ``get_distill_model``).

        Raises:
            TypeError: a module name that is not a str.
        """
        match = self._check_match(config, self.inter_match_keys, "add_inter_soft_label")
        for key in ("t_module", "s_module"):
            if not isinstance(match[key], str):
                raise TypeError(f'config["{key}"] must be str, not {_type_name(match[key])}.')
        self.inter_matches.append(match)
        return self

    def add_custom_loss_func(self, name, instance):
        """Register a loss under ``name`` for this config only: an ``nn.Module`` (PyTorch) or ``nn.Cell``
        (MindSpore) instance, or such a class, built with the entry's ``func_param``. ``get_distill_model`` checks
        that it belongs to the teacher's framework.

        Raises:
            TypeError: ``name`` not a str, or ``instance`` neither an ``nn.Module`` nor an ``nn.Cell``.
        """
        if not isinstance(name, str):
            raise TypeError(f"name must be str, not {_type_name(name)}.")
        if not (_is_loss_of("torch", instance) or _is_loss_of("mindspore", instance)):
            raise TypeError("`instance` must be a PyTorch `nn.Module` or MindSpore `nn.Cell`. ")
        self.custom_loss_func[name] = instance
        return self

    def set_teacher_train(self):
        """Run the teacher in train mode (dropout on); it still never receives gradients."""
        self.train_teacher = True
        return self

    def set_teacher_dtype(self, dtype):
        """Cast the teacher to ``dtype`` (e.g. ``torch.float16``) in ``get_distill_model``; by default it is never
        cast. PyTorch only.

        Raises:
            TypeError: ``dtype`` is not a ``torch.dtype``.
        """
        torch_dtype = _loaded_class("torch", "dtype")
        if torch_dtype is None or not isinstance(dtype, torch_dtype):
            raise TypeError(f"dtype must be a torch.dtype, not {_type_name(dtype)}.")
        self.teacher_dtype = dtype
        return self

    def get_soft_label_shape(self):
        """``{t_module: shape, s_module: shape}`` of the intermediate matches that give a ``shape`` (MindSpore)."""
        shapes = {}
        for match in self.inter_matches:
            if "shape" in match:
                shapes[match["t_module"]] = match["shape"]
                shapes[match["s_module"]] = match["shape"]
        return shapes


def get_distill_model(teacher, student, config):
    """Wrap ``teacher`` and ``student`` into a ``DistillDualModels``; the backend follows the teacher's type.

    * PyTorch (``nn.Module``): its forward returns ``(distill_loss, student_outputs, teacher_outputs)``. The student
      is put in train mode; the teacher in eval mode (unless ``set_teacher_train()``), never cast (unless
      ``set_teacher_dtype``) and always run without gradients.
    * MindSpore (``nn.Cell``): an ``nn.Cell`` whose ``construct(*inputs)`` returns one tensor,
      ``student_outputs[i] * w + distill_loss * (1 - w)`` (``set_hard_label(w, i)``), to train with
      ``nn.TrainOneStepCell``, ``mindspore.value_and_grad`` or ``mindspore.train.Model``.

    On any error the teacher and the student are left as they were.

    Raises:
        ValueError: a missing teacher or one of neither framework; an unknown loss or module name; MindSpore: no
            ``set_hard_label``, a missing ``shape`` in GRAPH_MODE, a bad output index.
        TypeError: a student that is not a model of the teacher's framework, a config of another type, a custom
            loss of the other framework, a loss class that does not accept its ``func_param``.
    """
    if teacher is None:
        raise ValueError("The model can't be None!")
    framework = _framework_of(teacher)
    if framework is None:
        raise ValueError(f"The model must be a MindSpore or PyTorch model, not {_type_name(teacher)}.")
    _check_student(framework, teacher, student)
    if not isinstance(config, KnowledgeDistillConfig):
        raise TypeError(f"config must be KnowledgeDistillConfig, not {_type_name(config)}.")
    _check_custom_losses(framework, config)
    if framework == "torch":
        from msmodelslim.pytorch.knowledge_distill.dual_model import DistillDualModels
    else:
        from msmodelslim.mindspore.knowledge_distill.dual_model import DistillDualModels
    return DistillDualModels(teacher, student, copy.copy(config))


def _check_student(framework, teacher, student):
    """Raises TypeError: the student is not a model of the teacher's framework (naming both types)."""
    student_framework = _framework_of(student)
    if student_framework == framework:
        return
    if student_framework is not None:
        raise TypeError(f"The teacher ({type(teacher)}) and the student ({type(student)}) must be models of the same "
                        f"framework: both PyTorch nn.Module or both MindSpore nn.Cell.")
    if framework == "torch":
        raise TypeError(f"model must be a Torch.nn.Module instance. Not {type(student)}")
    raise TypeError(f"model must be a MindSpore nn.Cell instance. Not {type(student)}")


def _check_custom_losses(framework, config):
    """Raises TypeError: a custom loss that is not an ``nn.Module`` (PyTorch teacher) or ``nn.Cell`` (MindSpore
    teacher), instance or class."""
    expected = "a PyTorch nn.Module" if framework == "torch" else "a MindSpore nn.Cell"
    for name, loss in config.custom_loss_func.items():
        if not _is_loss_of(framework, loss):
            shown = loss if isinstance(loss, type) else type(loss)
            raise TypeError(f'The custom loss "{name}" ({shown}) must be {expected} (instance or class) to distill '
                            f"{framework} models.")


def check_shared_parameters(shared, student_count):
    """The rule for parameters that the student shares with the teacher (``shared``: their names), both backends.

    Raises:
        ValueError: every one of the student's ``student_count`` parameters belongs to the teacher (it could not
            learn); when only some do, a WARNING names them (they stay frozen with the teacher).
    """
    if student_count and len(shared) == student_count:
        raise ValueError(f"get_distill_model: every parameter of the student ({len(shared)}) also belongs to the "
                         f"teacher, so the student could not learn; pass a separate student model.")
    if shared:
        logger.warning("The student shares %d parameter(s) with the teacher (%s): they are frozen with the teacher "
                       "while distilling, so the student does not train them.", len(shared), ", ".join(shared[:3]))
