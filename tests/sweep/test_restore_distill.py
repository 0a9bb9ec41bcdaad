"""Restores are exact for the distillation set-up (issue 11): when ``get_distill_model`` fails, the teacher and the
student are left exactly as they were - parameters (values, dtypes, objects), ``requires_grad``, train/eval modes
and hooks - also when they share a parameter and when the teacher cast of ``set_teacher_dtype`` fails half-way.

The helpers here (tiny Llama pair, state snapshots) are also used by ``test_sweep_distill.py``."""
import itertools
import logging

import pytest
import torch
import transformers as T
from torch import nn

from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig, get_distill_model

VOCAB = 128


def llama(layers, seed=0):
    """A tiny random ``LlamaForCausalLM`` (hidden 64, 4/2 heads, FFN 128), as in the sweep's repro."""
    torch.manual_seed(seed)
    config = T.LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64)
    return T.LlamaForCausalLM(config)


def llama_pair():
    """``(teacher, student)``: 4- and 2-layer tiny Llamas of the same width."""
    return llama(4, seed=0), llama(2, seed=1)


def token_ids():
    return torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))


def inter_match(**overrides):
    """An intermediate soft label between teacher layer 3 and student layer 1 (HiddenMse)."""
    match = {"t_module": "model.layers.3", "s_module": "model.layers.1", "t_output_idx": 0, "s_output_idx": 0,
             "loss_func": [{"func_name": "HiddenMse", "func_weight": 1}]}
    match.update(overrides)
    return match


def output_match(**overrides):
    """A soft label between the logits (KDKLDiv, T=2)."""
    match = {"t_output_idx": "logits", "s_output_idx": "logits",
             "loss_func": [{"func_name": "KDKLDiv", "func_weight": 1, "temperature": 2}]}
    match.update(overrides)
    return match


def snapshot(model):
    """Everything get_distill_model may touch: tensors (cloned), dtypes, parameter objects, ``requires_grad``,
    train modes and the hook ids of every submodule."""
    named = itertools.chain(model.named_parameters(remove_duplicate=False),
                            model.named_buffers(remove_duplicate=False))
    return {
        "tensors": {name: (t.detach().clone(), t.dtype, t.requires_grad, id(t)) for name, t in named},
        "training": {name: m.training for name, m in model.named_modules()},
        "hooks": {name: (list(m._forward_hooks), list(m._forward_pre_hooks)) for name, m in model.named_modules()},
    }


def assert_unchanged(model, before):
    """``model`` is exactly as ``snapshot`` saw it."""
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for name, (tensor, dtype, requires_grad, ident) in before["tensors"].items():
        now, now_dtype, now_grad, now_ident = after["tensors"][name]
        assert (now_dtype, now_grad, now_ident) == (dtype, requires_grad, ident), name
        assert torch.equal(now, tensor), name


def unusual_state(teacher, student):
    """Give both models a state get_distill_model would change: teacher in train mode with a frozen parameter,
    student in eval mode with a frozen parameter and a user hook. Returns their snapshots."""
    teacher.train()
    teacher.model.norm.weight.requires_grad_(False)
    student.eval()
    student.lm_head.weight.requires_grad_(False)
    student.model.layers[0].register_forward_hook(lambda *_: None)
    return snapshot(teacher), snapshot(student)


class RefusesCast(nn.Module):
    """A module whose dtype/device conversion fails (as a custom kernel module or a full device can): placed last
    in the teacher, the cast of ``set_teacher_dtype`` fails after most parameters are already converted."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))

    def _apply(self, fn, recurse=True):
        raise RuntimeError("this module cannot be converted")


def _config(*matches, dtype=None):
    config = KnowledgeDistillConfig()
    for match in matches:
        (config.add_inter_soft_label if "t_module" in match else config.add_output_soft_label)(match)
    return config.set_teacher_dtype(dtype) if dtype is not None else config


FAILURES = [
    pytest.param(lambda t, s: (t, s, _config(inter_match(s_module="model.layers.7"))), ValueError,
                 r'"model\.layers\.7" not in student model', id="wrong-s_module"),
    pytest.param(lambda t, s: (t, s, _config(output_match(), inter_match(t_module="model.layers.9"))), ValueError,
                 r'"model\.layers\.9" not in teacher model', id="wrong-t_module"),
    pytest.param(lambda t, s: (t, s, _config(output_match(loss_func=[{"func_name": "Nope", "func_weight": 1}]))),
                 ValueError, 'func name "Nope" not exist', id="unknown-loss"),
    pytest.param(lambda t, s: (t, s, _config(inter_match(loss_func=[{"func_name": "KDMse", "func_weight": 1,
                                                                     "func_param": [1, 2]}]))),
                 TypeError, "positional argument", id="bad-func_param"),
    pytest.param(lambda t, s: (t, s, _config(inter_match(t_module="model.rotary_emb", adaptor=True))),
                 ValueError, "cannot infer the widths", id="adaptor-widths"),
    pytest.param(lambda t, s: (t, t, _config(output_match())), ValueError, "same object", id="teacher-is-student"),
    pytest.param(lambda t, s: (t, s, _config(inter_match(s_module="nope"), dtype=torch.bfloat16)), ValueError,
                 '"nope" not in student model', id="teacher-dtype+wrong-s_module"),
    pytest.param(lambda t, s: (t.add_module("refuses", RefusesCast()) or t, s,
                               _config(inter_match(), dtype=torch.bfloat16)),
                 RuntimeError, "cannot be converted", id="teacher-cast-fails-half-way"),
]


@pytest.mark.parametrize("build, error, message", FAILURES)
def test_failed_setup_leaves_both_models_exactly_as_they_were(build, error, message):
    teacher, student, config = build(*llama_pair())
    teacher_before, student_before = unusual_state(teacher, student) if teacher is not student else (
        snapshot(teacher), snapshot(student))
    with pytest.raises(error, match=message):
        get_distill_model(teacher, student, config)
    assert_unchanged(teacher, teacher_before)
    assert_unchanged(student, student_before)


def shared_pair():
    """A pair whose student uses the teacher's embedding tensor (the same Parameter object)."""
    teacher, student = llama_pair()
    student.model.embed_tokens.weight = teacher.model.embed_tokens.weight
    return teacher, student


@pytest.mark.parametrize("extra, dtype, error", [
    pytest.param(None, None, ValueError, id="shared-wrong-s_module"),
    pytest.param(RefusesCast, torch.bfloat16, RuntimeError, id="shared-teacher-cast-fails"),
])
def test_failed_setup_restores_a_shared_parameter(extra, dtype, error):
    teacher, student = shared_pair()
    if extra is not None:
        teacher.add_module("refuses", extra())
    match = inter_match() if extra else inter_match(s_module="nope")
    before = snapshot(teacher), snapshot(student)
    with pytest.raises(error):
        get_distill_model(teacher, student, _config(match, dtype=dtype))
    assert_unchanged(teacher, before[0])
    assert_unchanged(student, before[1])
    assert student.model.embed_tokens.weight is teacher.model.embed_tokens.weight
    assert student.model.embed_tokens.weight.dtype == torch.float32


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_shared_parameter_is_frozen_while_distilling_and_given_back():
    teacher, student = shared_pair()
    records = _Records()
    logging.getLogger("msmodelslim").addHandler(records)
    try:
        model = get_distill_model(teacher, student, _config(inter_match()))
    finally:
        logging.getLogger("msmodelslim").removeHandler(records)
    assert any("shares 1 parameter" in m and "model.embed_tokens.weight" in m for m in records.messages)
    assert not teacher.model.embed_tokens.weight.requires_grad
    loss, _, _ = model(input_ids=token_ids())
    loss.backward()
    assert student.model.embed_tokens.weight.grad is None  # frozen with the teacher
    assert student.model.layers[1].mlp.up_proj.weight.grad is not None
    returned = model.get_student_model()
    assert returned.model.embed_tokens.weight.requires_grad
    assert all(not m._forward_hooks for m in itertools.chain(returned.modules(), teacher.modules()))
