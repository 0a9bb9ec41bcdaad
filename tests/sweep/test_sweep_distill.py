"""Replay of the bad-input sweep's distillation rows E01-E12 (bad-input-2026-11-26.md, F-4 and F-16): every bad
input gives its documented error, naming the argument and the value, and leaves teacher and student unchanged;
the inputs that worked still work."""
import math
import re

import pytest
import torch
from torch import nn

from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig, get_distill_model
from test_restore_distill import assert_unchanged, inter_match, llama_pair, output_match, snapshot, token_ids


def _loss(**entry):
    return [dict({"func_name": "KDMse", "func_weight": 1}, **entry)]


class NeedsArg(nn.Module):
    """A custom loss class whose constructor needs an argument."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, student, teacher):
        return self.scale * (student - teacher).square().mean()


# ---------------------------------------------------------------------------------------------- config-time errors
CONFIG_ERRORS = [
    pytest.param(lambda c: c.add_output_soft_label(output_match(t_output_idx=-1)), ValueError,
                 r'config\["t_output_idx"\] = -1 is smaller than 0', id="E03-t_output_idx-negative"),
    pytest.param(lambda c: c.add_output_soft_label(output_match(loss_func={"func_name": "KDMse", "func_weight": 1})),
                 TypeError, "loss_func must be a list of dicts, not dict", id="E06-loss_func-dict"),
    pytest.param(lambda c: c.add_output_soft_label(output_match(loss_func=_loss(func_weight="1"))), TypeError,
                 r"func_weight must be int or float, not str \('1'\)", id="E07-func_weight-str"),
    pytest.param(lambda c: c.add_output_soft_label(output_match(loss_func=_loss(func_weight=True))), TypeError,
                 r"func_weight must be int or float, not bool \(True\)", id="E07-func_weight-bool"),
    pytest.param(lambda c: c.add_output_soft_label(output_match(loss_func=_loss(func_weight=torch.tensor(1.0)))),
                 TypeError, r"func_weight must be int or float, not Tensor", id="E07-func_weight-tensor"),
    pytest.param(lambda c: c.add_output_soft_label(output_match(loss_func=_loss(func_weight=math.nan))), ValueError,
                 r"func_weight must be a finite number > 0, got nan", id="E07-func_weight-nan"),
    pytest.param(lambda c: c.add_inter_soft_label(inter_match(loss_func=_loss(func_weight=math.inf))), ValueError,
                 r"func_weight must be a finite number > 0, got inf", id="E07-func_weight-inf"),
    pytest.param(lambda c: c.add_output_soft_label(output_match(loss_func=_loss(func_weight=-1))), ValueError,
                 r"func_weight must be a finite number > 0, got -1", id="E07-func_weight-negative"),
    pytest.param(lambda c: c.add_output_soft_label(output_match(loss_func=_loss(func_weight=0))), ValueError,
                 "loss_func must have func_weight", id="E07-func_weight-zero"),
    pytest.param(lambda c: c.add_output_soft_label(output_match(loss_func=_loss(temperature=math.nan))), ValueError,
                 r"Value of temperature is invalid: nan", id="E08-temperature-nan"),
    pytest.param(lambda c: c.add_output_soft_label(output_match(loss_func=_loss(temperature=math.inf))), ValueError,
                 r"Value of temperature is invalid: inf", id="E08-temperature-inf"),
    pytest.param(lambda c: c.add_output_soft_label(output_match(loss_func=_loss(temperature=0))), ValueError,
                 r"Value of temperature is invalid: 0\b", id="E08-temperature-zero"),
    pytest.param(lambda c: c.add_inter_soft_label(inter_match(loss_func=_loss(temperature=-0.5))), ValueError,
                 r"Value of temperature is invalid: -0.5", id="E08-temperature-negative"),
    pytest.param(lambda c: c.add_output_soft_label(output_match(loss_func=_loss(temperature=False))), TypeError,
                 "temperature must be int or float, not bool", id="E08-temperature-bool"),
    pytest.param(lambda c: c.add_output_soft_label(output_match(loss_func=_loss(func_name="MMD",
                                                                                func_param=[math.nan]))),
                 ValueError, r"func_param must hold finite numbers, got \[nan\]", id="E08-func_param-nan"),
    pytest.param(lambda c: c.set_hard_label(math.nan, 0), ValueError, "weight must be between 0 and 1, but input nan",
                 id="E08-hard_label-nan"),
    pytest.param(lambda c: c.set_hard_label(math.inf, 0), ValueError, "weight must be between 0 and 1, but input inf",
                 id="E08-hard_label-inf"),
    pytest.param(lambda c: c.set_hard_label(1, 0), TypeError, "weight must be float, not int", id="E12-weight-int"),
    pytest.param(lambda c: c.set_hard_label(0.5, None), TypeError, "index must be int, not NoneType",
                 id="E12-index-None"),
    pytest.param(lambda c: c.add_inter_soft_label(inter_match(t_module=3)), TypeError,
                 r'config\["t_module"\] must be str, not int', id="E12-t_module-int"),
]


@pytest.mark.parametrize("add, error, message", CONFIG_ERRORS)
def test_config_time_errors_name_the_argument_and_value(add, error, message):
    config = KnowledgeDistillConfig()
    with pytest.raises(error, match=message):
        add(config)
    assert (config.inter_matches, config.output_matches, config.hard_label_loss_weight) == ([], [], 0.5)


def test_E07_valid_weights_and_temperatures_are_accepted():
    config = KnowledgeDistillConfig().add_output_soft_label(output_match(
        loss_func=_loss(func_weight=0.5, temperature=2) + _loss(func_weight=2, temperature=None)))
    assert [e["temperature"] for e in config.output_matches[0]["loss_func"]] == [2, None]


# ---------------------------------------------------------------------------------------------- set-up errors
def _same_object(teacher, student):
    return teacher, teacher, KnowledgeDistillConfig().add_output_soft_label(output_match())


def _student_inside_teacher(teacher, student):
    return teacher, teacher.model, KnowledgeDistillConfig().add_output_soft_label(output_match(
        t_output_idx=0, s_output_idx=0))


def _with(config_of):
    return lambda teacher, student: (teacher, student, config_of(KnowledgeDistillConfig()))


SETUP_ERRORS = [
    pytest.param(_with(lambda c: c.add_inter_soft_label(inter_match(t_module="model.layers.9"))), ValueError,
                 r'The module "model\.layers\.9" not in teacher model', id="E01-t_module"),
    pytest.param(_with(lambda c: c.add_inter_soft_label(inter_match(s_module="model.layers.9"))), ValueError,
                 r'The module "model\.layers\.9" not in student model', id="E01-s_module"),
    pytest.param(_with(lambda c: c.add_output_soft_label(output_match(loss_func=_loss(func_name="Nope")))),
                 ValueError, 'The func name "Nope" not exist', id="E06-unknown-func_name"),
    pytest.param(_with(lambda c: c.add_output_soft_label(output_match(loss_func=_loss(func_param=[1, 2])))),
                 TypeError, "positional argument", id="E06-func_param-arity"),
    pytest.param(_with(lambda c: c.add_custom_loss_func("needs", NeedsArg).add_output_soft_label(
        output_match(loss_func=_loss(func_name="needs")))), TypeError, "scale", id="E06-custom-class-needs-arg"),
    pytest.param(_same_object, ValueError, "teacher and the student are the same object", id="E09-same-object"),
    pytest.param(_student_inside_teacher, ValueError, "every parameter of the student .* also belongs to the teacher",
                 id="E09-student-inside-teacher"),
    pytest.param(_with(lambda c: c.set_teacher_dtype(torch.bfloat16).add_inter_soft_label(
        inter_match(s_module="model.layers.9"))), ValueError, r'"model\.layers\.9" not in student model',
                 id="E11-teacher_dtype-wrong-s_module"),
]


@pytest.mark.parametrize("build, error, message", SETUP_ERRORS)
def test_setup_errors_leave_the_models_unchanged(build, error, message):
    teacher, student, config = build(*llama_pair())
    before = snapshot(teacher), snapshot(student)
    with pytest.raises(error, match=message):
        get_distill_model(teacher, student, config)
    assert_unchanged(teacher, before[0])
    assert_unchanged(student, before[1])
    assert all(p.dtype == torch.float32 for p in teacher.parameters())


# ---------------------------------------------------------------------------------------------- first-forward errors
@pytest.mark.parametrize("add, message", [
    pytest.param(lambda c: c.add_output_soft_label(output_match(t_output_idx=7)),
                 r"t_output_idx in output_match0 .*out of range: index 7, the output has \d element", id="E02-t-idx-7"),
    pytest.param(lambda c: c.add_output_soft_label(output_match(s_output_idx="logitz")),
                 r"s_output_idx in output_match0 .*no field 'logitz' \(fields: \['logits'", id="E02-s-idx-logitz"),
    pytest.param(lambda c: c.add_inter_soft_label(inter_match(s_output_idx=5)),
                 r"s_output_idx in inter_match0 .*out of range: index 5", id="E02-inter-idx-5"),
])
def test_E02_bad_output_index_fails_at_the_first_forward(add, message):
    teacher, student = llama_pair()
    model = get_distill_model(teacher, student, add(KnowledgeDistillConfig()))
    with pytest.raises(ValueError, match=message):
        model(input_ids=token_ids())


# ---------------------------------------------------------------------------------------------- what works
def _train_step(model):
    loss, _, _ = model(input_ids=token_ids())
    loss.backward()
    assert torch.isfinite(loss)
    return loss


def test_E04_bf16_student_with_fp32_teacher_on_the_logits():
    teacher, student = llama_pair()
    model = get_distill_model(teacher, student.to(torch.bfloat16),
                              KnowledgeDistillConfig().add_output_soft_label(output_match()))
    _train_step(model)
    assert student.lm_head.weight.grad is not None and teacher.lm_head.weight.grad is None


@pytest.mark.parametrize("dtype, adaptor", [
    pytest.param(torch.bfloat16, True, id="E05-bf16-adaptor-true"),
    pytest.param(torch.bfloat16, [64, 64], id="E05-bf16-adaptor-widths"),
    pytest.param(torch.float64, True, id="E05-fp64-adaptor-true"),
    pytest.param(torch.float64, [64, 64], id="E05-fp64-adaptor-widths"),
])
def test_E05_adaptor_follows_the_student_dtype_and_device(dtype, adaptor):
    teacher, student = llama_pair()
    model = get_distill_model(teacher, student.to(dtype),
                              KnowledgeDistillConfig().add_inter_soft_label(inter_match(adaptor=adaptor)))
    layer = model.adaptors["inter0"]
    assert (layer.weight.dtype, layer.weight.device) == (dtype, student.lm_head.weight.device)
    _train_step(model)
    assert layer.weight.grad is not None and layer.weight.grad.dtype == dtype
    assert student.model.layers[1].mlp.down_proj.weight.grad is not None


# ---------------------------------------------------------------------------------------------- E10: closed wrapper
def _closed(how):
    teacher, student = llama_pair()
    model = get_distill_model(teacher, student, KnowledgeDistillConfig().add_inter_soft_label(inter_match()))
    model(input_ids=token_ids())
    returned = model.get_student_model() if how == "get_student_model()" else (model.close() or student)
    return teacher, returned, model


@pytest.mark.parametrize("how", [pytest.param("get_student_model()", id="E10-get_student_model"),
                                 pytest.param("close()", id="E10-close")])
def test_E10_closed_wrapper_refuses_to_run_and_touches_nothing(how):
    teacher, student, model = _closed(how)
    teacher.model.norm.weight.requires_grad_(False)  # the user's own choice after closing
    before = snapshot(teacher), snapshot(student)
    expected = "closed by " + re.escape(how) + "; create a new one with get_distill_model"
    with pytest.raises(RuntimeError, match=expected):
        model(input_ids=token_ids())
    with pytest.raises(RuntimeError, match=expected):
        model.to_ddp()
    with pytest.raises(RuntimeError, match=expected):
        with model:
            pass
    assert model.get_student_model() is student  # again: same object, nothing re-done
    model.remove_hooks()
    model.close()
    assert_unchanged(teacher, before[0])
    assert_unchanged(student, before[1])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in student.modules())
    assert sum(p.requires_grad for p in teacher.parameters()) == len(list(teacher.parameters())) - 1
