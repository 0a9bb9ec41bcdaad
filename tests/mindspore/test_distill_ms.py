"""get_distill_model with MindSpore Cells: the losses against hand-computed values, training in PyNative and
GRAPH_MODE (the teacher bit-identical, the student changed), gradients equal to a hand-written loss, intermediate
outputs through wrapped sub-cells, get_student_model, every config error with the models unchanged, and each
framework's path with the other one blocked."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import Tensor, nn, ops  # noqa: E402

from msmodelslim.common.knowledge_distill.knowledge_distill import (KnowledgeDistillConfig,  # noqa: E402
                                                                      get_distill_model)
from msmodelslim.mindspore.knowledge_distill import losses  # noqa: E402

ms.set_device("CPU")
BATCH, FEATURES, CLASSES = 16, 8, 3


@pytest.fixture(params=["pynative", "graph"])
def mode(request):
    """Run the test in PyNative mode and in GRAPH_MODE; PyNative afterwards."""
    ms.set_context(mode=ms.PYNATIVE_MODE if request.param == "pynative" else ms.GRAPH_MODE)
    yield request.param
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture(autouse=True)
def _pynative_after():
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


# ---------------------------------------------------------------------------------------------- tiny models
class Pair(nn.Cell):
    """A sub-cell with a tuple output: (hidden, 2 * hidden)."""

    def __init__(self, width):
        super().__init__()
        self.dense = nn.Dense(width, 6)

    def construct(self, x):
        hidden = self.dense(x)
        return hidden, hidden * 2


class Classifier(nn.Cell):
    """A 2-layer MLP "network with loss": returns (cross-entropy loss, logits)."""

    def __init__(self, hidden):
        super().__init__()
        self.body = nn.SequentialCell(nn.Dense(FEATURES, hidden), nn.ReLU())
        self.pair = Pair(hidden)
        self.head = nn.Dense(6, CLASSES)
        self.ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    def construct(self, x, labels):
        hidden, _ = self.pair(self.body(x))
        logits = self.head(ops.relu(hidden))
        return self.ce(logits, labels), logits


def models(seed=0):
    ms.set_seed(seed)
    return Classifier(32), Classifier(8)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, FEATURES)).astype(np.float32)
    return Tensor(x), Tensor((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32))


def kd_config(weight=0.5, index=0, temperature=2, shape=(BATCH, 6), module="pair", hidden_weight=2):
    config = KnowledgeDistillConfig().set_hard_label(weight, index)
    config.add_output_soft_label({"t_output_idx": 1, "s_output_idx": 1, "loss_func": [
        {"func_name": "KDCrossEntropy", "func_weight": 1, "temperature": temperature}]})
    inter = {"t_module": module, "s_module": module, "t_output_idx": 0, "s_output_idx": 0,
             "loss_func": [{"func_name": "HiddenMse", "func_weight": hidden_weight}]}
    if shape is not None:
        inter["shape"] = list(shape)
    return config.add_inter_soft_label(inter)


def snapshot(model):
    """Everything get_distill_model may change: sub-cells (identity), train flags, parameters and their values."""
    cells = {name: (cell, cell.training, dict(cell._cells)) for name, cell in model.cells_and_names()}
    params = [(p, p.name, p.requires_grad, p.asnumpy().copy()) for p in model.get_parameters()]
    return cells, params


def assert_unchanged(model, before):
    cells, params = before
    now_cells, now_params = snapshot(model)
    assert now_cells.keys() == cells.keys()
    for name, (cell, training, children) in cells.items():
        assert now_cells[name][0] is cell and now_cells[name][1] == training, name
        assert now_cells[name][2] == children, name
    assert len(now_params) == len(params)
    for (param, name, flag, value), (now, now_name, now_flag, now_value) in zip(params, now_params):
        assert now is param and now_name == name and now_flag == flag and np.array_equal(now_value, value), name


# ---------------------------------------------------------------------------------------------- losses
def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


S = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], np.float32)
T = np.array([[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]], np.float32)


def test_kd_cross_entropy_is_the_original_formula_without_t_squared():
    expected = -(_softmax(T / 2) * np.log(_softmax(S / 2))).sum(-1).mean()
    value = losses.KDCrossEntropy()(Tensor(S).astype(ms.float16), Tensor(T), 2)
    assert value.dtype == ms.float32
    assert np.isclose(value.asnumpy(), expected, atol=2e-3)  # float16 input
    assert np.isclose(losses.KDCrossEntropy()(Tensor(S), Tensor(T), 2).asnumpy(), expected, atol=1e-6)
    per_row = Tensor(np.array([1.0, 4.0], np.float32))  # a tensor temperature divides row by row
    rows = -(_softmax(T / [[1.0], [4.0]]) * np.log(_softmax(S / [[1.0], [4.0]]))).sum(-1).mean()
    assert np.isclose(losses.KDCrossEntropy()(Tensor(S), Tensor(T), per_row).asnumpy(), rows, atol=1e-6)


def test_kd_mse_kl_div_hidden_mse_and_cosine():
    assert np.isclose(losses.KDMse()(Tensor(S), Tensor(T), 2).asnumpy(), ((S / 2 - T / 2) ** 2).mean(), atol=1e-6)
    p, q = _softmax(T), _softmax(S)
    assert np.isclose(losses.KLDivLoss()(Tensor(S), Tensor(T)).asnumpy(), (p * (np.log(p) - np.log(q))).sum(-1).mean(),
                      atol=1e-6)
    assert np.isclose(losses.HiddenMse()(Tensor(S), Tensor(T)).asnumpy(), ((S - T) ** 2).mean(), atol=1e-6)
    cosine = (S * T).sum(-1) / (np.linalg.norm(S, axis=-1) * np.linalg.norm(T, axis=-1))
    assert np.isclose(losses.HiddenCosine()(Tensor(S), Tensor(T)).asnumpy(), (1 - cosine).mean(), atol=1e-6)
    assert np.isclose(losses.HiddenCosine()(Tensor(S), Tensor(S)).asnumpy(), 0.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- training
def test_train_one_step_cell_lowers_the_loss_and_never_touches_the_teacher(mode):
    teacher, student = models()
    teacher_params = [(p, p.asnumpy().copy()) for p in teacher.get_parameters()]
    student_before = [p.asnumpy().copy() for p in student.get_parameters()]
    dual = get_distill_model(teacher, student, kd_config())
    assert isinstance(dual, nn.Cell)
    assert not teacher.training and student.training
    trainable = dual.trainable_params()
    assert {id(p) for p in trainable} == {id(p) for p in student.trainable_params()}
    assert all(not p.requires_grad for p, _ in teacher_params)
    step = nn.TrainOneStepCell(dual, nn.Adam(trainable, learning_rate=1e-2))
    x, labels = batch()
    values = [float(step(x, labels).asnumpy()) for _ in range(6)]
    assert values[-1] < values[0]
    assert all(np.array_equal(p.asnumpy(), value) for p, value in teacher_params)
    assert any(not np.array_equal(p.asnumpy(), value) for p, value in zip(student.get_parameters(), student_before))


class Reference(nn.Cell):
    """The dual model's output for kd_config, written out by hand on the unwrapped models."""

    def __init__(self, teacher, student, weight, index):
        super().__init__()
        self.teacher, self.student, self.weight, self.index = teacher, student, weight, index

    def construct(self, x, labels):
        t_hidden = ops.stop_gradient(self.teacher.pair(self.teacher.body(x))[0])
        t_logits = ops.stop_gradient(self.teacher(x, labels)[1])
        s_hidden = self.student.pair(self.student.body(x))[0]
        s_loss, s_logits = self.student(x, labels)
        kd = -(ops.softmax(t_logits / 2, -1) * ops.log_softmax(s_logits / 2, -1)).sum(-1).mean()
        distill = kd + 2 * ops.square(s_hidden - t_hidden).mean()
        if self.index == -1:
            return distill
        return s_loss * self.weight + distill * (1 - self.weight)


@pytest.mark.parametrize("weight, index, module", [(0.3, 0, "pair"), (0.5, -1, "pair"), (0.7, 0, "pair.dense")])
def test_gradients_equal_those_of_the_hand_written_loss(mode, weight, index, module):
    teacher, student = models(seed=1)
    weights, teacher_weights = student.trainable_params(), teacher.trainable_params()
    x, labels = batch(1)
    expected, expected_grads = ms.value_and_grad(Reference(teacher, student, weight, index), None, weights)(x, labels)
    config = kd_config(weight=weight, module=module)  # pair[0] is pair.dense's output (a tuple / a tensor)
    config.output_replace_idx = index
    dual = get_distill_model(teacher, student, config)
    value, grads = ms.value_and_grad(dual, None, weights)(x, labels)
    assert np.isclose(value.asnumpy(), expected.asnumpy(), atol=1e-6)
    for grad, expected_grad in zip(grads, expected_grads):
        assert np.allclose(grad.asnumpy(), expected_grad.asnumpy(), atol=1e-6)
    teacher_grads = ms.value_and_grad(dual, None, teacher_weights)(x, labels)[1]  # asked for explicitly
    assert all(not g.asnumpy().any() for g in teacher_grads)


def test_only_intermediate_labels_still_train_the_student(mode):
    teacher, student = models(seed=2)
    config = KnowledgeDistillConfig().set_hard_label(0.5, 0).add_inter_soft_label(
        {"t_module": "pair", "s_module": "pair", "t_output_idx": 1, "s_output_idx": 1, "shape": [BATCH, 6],
         "loss_func": [{"func_name": "HiddenCosine", "func_weight": 1}]})
    config.output_replace_idx = -1
    dual = get_distill_model(teacher, student, config)
    step = nn.TrainOneStepCell(dual, nn.SGD(dual.trainable_params(), learning_rate=0.5))
    x, labels = batch(2)
    values = [float(step(x, labels).asnumpy()) for _ in range(4)]
    assert values[-1] < values[0]


def test_intermediate_outputs_of_wrapped_sub_cells_match_a_manual_computation(mode):
    teacher, student = models(seed=3)
    x, labels = batch(3)
    t_double = teacher.pair(teacher.body(x))[1].asnumpy()
    s_double = student.pair(student.body(x))[1].asnumpy()
    s_loss = student(x, labels)[0].asnumpy()
    config = KnowledgeDistillConfig().set_hard_label(0.25, 0).add_inter_soft_label(
        {"t_module": "pair", "s_module": "pair", "t_output_idx": 1, "s_output_idx": 1, "shape": [BATCH, 6],
         "loss_func": [{"func_name": "HiddenMse", "func_weight": 3}, {"func_name": "KDMse", "func_weight": 1,
                                                                     "temperature": 4}]})
    dual = get_distill_model(teacher, student, config)
    distill = 3 * ((s_double - t_double) ** 2).mean() + ((s_double / 4 - t_double / 4) ** 2).mean()
    assert np.isclose(dual(x, labels).asnumpy(), s_loss * 0.25 + distill * 0.75, atol=1e-5)
    assert np.isclose(dual.distill_loss.asnumpy(), distill, atol=1e-5)


def test_custom_cell_losses_instance_and_class(mode):
    class L1(nn.Cell):
        def __init__(self, scale=1.0):
            super().__init__()
            self.scale = scale

        def construct(self, student, teacher):
            return ops.abs(student - teacher).mean() * self.scale

    teacher, student = models(seed=4)
    x, labels = batch(4)
    expected = np.abs(student(x, labels)[1].asnumpy() - teacher(x, labels)[1].asnumpy()).mean() * 3
    config = KnowledgeDistillConfig().set_hard_label(0.5, 0)
    config.add_custom_loss_func("L1", L1())
    config.add_custom_loss_func("ScaledL1", L1)
    config.add_output_soft_label({"t_output_idx": 1, "s_output_idx": 1, "loss_func": [
        {"func_name": "L1", "func_weight": 1}, {"func_name": "ScaledL1", "func_weight": 1, "func_param": [2.0]}]})
    config.output_replace_idx = -1
    assert np.isclose(get_distill_model(teacher, student, config)(x, labels).asnumpy(), expected, atol=1e-5)


def test_mindspore_train_model_trains_the_dual_model_in_graph_mode():
    import mindspore.dataset as ds

    ms.set_context(mode=ms.GRAPH_MODE)
    teacher, student = models(seed=6)
    teacher_params = [(p, p.asnumpy().copy()) for p in teacher.get_parameters()]
    dual = get_distill_model(teacher, student, kd_config(shape=(4, 6)))
    x, labels = batch(6)
    data = ds.NumpySlicesDataset({"x": x.asnumpy(), "labels": labels.asnumpy()}, shuffle=False).batch(4)
    before = float(dual(x[:4], labels[:4]).asnumpy())
    ms.train.Model(dual, optimizer=nn.Adam(dual.trainable_params(), learning_rate=1e-2)).train(
        3, data, dataset_sink_mode=False)
    assert not teacher.training and student.training  # Model.train set_train()s the whole network
    assert float(dual(x[:4], labels[:4]).asnumpy()) < before
    assert all(np.array_equal(p.asnumpy(), value) for p, value in teacher_params)


def test_pynative_infers_the_shape_and_jit_compiles_afterwards():
    teacher, student = models(seed=5)
    dual = get_distill_model(teacher, student, kd_config(shape=None))
    step = nn.TrainOneStepCell(dual, nn.Adam(dual.trainable_params(), learning_rate=1e-2))
    x, labels = batch(5)
    first = float(step(x, labels).asnumpy())
    smaller = step(x[:5], labels[:5])  # the buffer follows the teacher tensor in PyNative
    assert np.isfinite(smaller.asnumpy())
    step(x, labels)

    @ms.jit
    def compiled(inputs, targets):
        return step(inputs, targets)

    values = [float(compiled(x, labels).asnumpy()) for _ in range(3)]
    assert values[-1] < first


def test_jit_before_the_shape_is_known_names_the_match():
    teacher, student = models()
    dual = get_distill_model(teacher, student, kd_config(shape=None))

    @ms.jit
    def compiled(inputs, targets):
        return dual(inputs, targets)

    with pytest.raises(ValueError, match=r'inter_match0 \(add_inter_soft_label config\).*"shape"'):
        compiled(*batch())


def test_teacher_train_mode_and_set_train():
    teacher, student = models()
    dual = get_distill_model(teacher, student, kd_config())
    dual.set_train(True)
    assert student.training and not teacher.training and not teacher.pair.cell.dense.training
    teacher2, student2 = models()
    dual2 = get_distill_model(teacher2, student2, kd_config().set_teacher_train())
    assert teacher2.training
    dual2.set_train(False)
    assert not teacher2.training and not student2.training


# ---------------------------------------------------------------------------------------------- get_student_model
class MeanGap(nn.Cell):
    """A custom loss comparing tensors of any shapes: (mean(s) - mean(t))^2."""

    def construct(self, student, teacher):
        return ops.square(student.mean() - teacher.mean())


def test_get_student_model_restores_the_sub_cells_and_refuses_further_use(mode):
    teacher, student = models()
    x, labels = batch()
    originals = teacher.pair, student.pair, teacher.body, student.body, teacher.body[0], student.body[0]
    names = [p.name for p in student.get_parameters()], [p.name for p in teacher.get_parameters()]
    config = kd_config().add_inter_soft_label(
        {"t_module": "body.0", "s_module": "body.0", "t_output_idx": 0, "s_output_idx": 0, "shape": [BATCH, 32],
         "loss_func": [{"func_name": "MeanGap", "func_weight": 1}]})
    config.add_custom_loss_func("MeanGap", MeanGap())
    dual = get_distill_model(teacher, student, config)
    assert type(student.pair).__name__ == "StudentTap" and type(teacher.body.cell_list[0]).__name__ == "TeacherTap"
    assert all(p.name.startswith("student_model.") for p in student.trainable_params())
    step = nn.TrainOneStepCell(dual, nn.SGD(dual.trainable_params()))
    assert np.isfinite(step(x, labels).asnumpy())
    returned = dual.get_student_model()
    assert returned is student
    assert (teacher.pair, student.pair, teacher.body, student.body, teacher.body[0], student.body[0]) == originals
    assert type(student.pair) is Pair and type(student.body[0]) is nn.Dense
    assert student.body.cell_list[0] is student.body[0] and teacher.body.cell_list[0] is teacher.body[0]
    assert ([p.name for p in student.get_parameters()], [p.name for p in teacher.get_parameters()]) == names
    assert all(p.requires_grad for p in teacher.get_parameters())
    with pytest.raises(RuntimeError, match=r"closed by get_student_model\(\)"):
        dual(x, labels)
    with pytest.raises(RuntimeError, match=r"closed by get_student_model\(\)"):
        nn.TrainOneStepCell(dual, nn.SGD(student.trainable_params()))(x, labels)
    teacher_values = [p.asnumpy().copy() for p in teacher.get_parameters()]
    if mode == "pynative":
        with pytest.raises(RuntimeError, match=r"closed by get_student_model\(\)"):
            step(x, labels)
    else:  # the graph compiled before keeps its wrappers and still distills, the teacher frozen
        assert np.isfinite(step(x, labels).asnumpy())
        assert all(np.array_equal(p.asnumpy(), v) for p, v in zip(teacher.get_parameters(), teacher_values))
    again = get_distill_model(teacher, student, kd_config())  # the models can be wrapped again
    assert np.isfinite(again(x, labels).asnumpy())


# ---------------------------------------------------------------------------------------------- errors
def _inter(**overrides):
    match = {"t_module": "pair", "s_module": "pair", "t_output_idx": 0, "s_output_idx": 0, "shape": [BATCH, 6],
             "loss_func": [{"func_name": "HiddenMse", "func_weight": 1}]}
    match.update(overrides)
    return match


def _hard(config):
    return config.set_hard_label(0.5, 0)


def _index(value):
    config = _hard(KnowledgeDistillConfig())
    config.output_replace_idx = value
    return config


class NeedsTwo(nn.Cell):
    def __init__(self, first, second):
        super().__init__()
        self.scale = first * second

    def construct(self, student, teacher):
        return ops.square(student - teacher).mean() * self.scale


CONFIG_ERRORS = [
    pytest.param(lambda: KnowledgeDistillConfig(), ValueError,
                 'must use method "set_hard_label" to set weight and index', id="no-set_hard_label"),
    pytest.param(lambda: _index(None), ValueError, 'must use method "set_hard_label"', id="index-None"),
    pytest.param(lambda: _index("0"), TypeError, "output_replace_idx must be int, not str", id="index-str"),
    pytest.param(lambda: _index(-2), ValueError, "output_replace_idx must be -1 .* got -2", id="index-below-minus-1"),
    pytest.param(lambda: _hard(KnowledgeDistillConfig()).add_inter_soft_label(_inter(shape=[16, "6"])), TypeError,
                 r'inter_match0 \(add_inter_soft_label config\): "shape" must be a list of int', id="shape-str"),
    pytest.param(lambda: _hard(KnowledgeDistillConfig()).add_inter_soft_label(_inter(shape=[-1, 6])), ValueError,
                 r'inter_match0 .*"shape" must hold sizes >= 0', id="shape-negative"),
    pytest.param(lambda: _hard(KnowledgeDistillConfig()).add_inter_soft_label(_inter(t_module="nope")), ValueError,
                 'The module name: "nope" is not in the teacher model! Please check config', id="t_module"),
    pytest.param(lambda: _hard(KnowledgeDistillConfig()).add_inter_soft_label(_inter(s_module="pair.nope")),
                 ValueError, 'The module name: "pair.nope" is not in the student model!', id="s_module"),
    pytest.param(lambda: _hard(KnowledgeDistillConfig()).add_inter_soft_label(_inter(s_module="")), ValueError,
                 r'inter_match0 .*"s_module" must name a sub-cell, not the whole student', id="s_module-root"),
    pytest.param(lambda: _hard(KnowledgeDistillConfig()).add_inter_soft_label(_inter(loss_func=[
        {"func_name": "Nope", "func_weight": 1}])), ValueError, 'The func name "Nope" not exist. please check config.',
                 id="unknown-loss"),
    pytest.param(lambda: _hard(KnowledgeDistillConfig()).add_output_soft_label(
        {"t_output_idx": "logits", "s_output_idx": 1, "loss_func": []}), ValueError,
                 r'output_match0 .*indexed by position; config\["t_output_idx"\] = \'logits\'', id="str-index"),
    pytest.param(lambda: _hard(KnowledgeDistillConfig()).add_inter_soft_label(_inter(adaptor=True)), ValueError,
                 "inter_match0 .*'adaptor' is supported with PyTorch models only", id="adaptor"),
    pytest.param(lambda: _hard(KnowledgeDistillConfig()).add_custom_loss_func("two", NeedsTwo).add_output_soft_label(
        {"t_output_idx": 1, "s_output_idx": 1, "loss_func": [{"func_name": "two", "func_weight": 1,
                                                              "func_param": [1.0]}]}), TypeError, "second",
                 id="loss-class-func_param"),
]


@pytest.mark.parametrize("make_config, error, message", CONFIG_ERRORS)
def test_config_errors_leave_the_models_unchanged(make_config, error, message):
    teacher, student = models()
    before = snapshot(teacher), snapshot(student)
    with pytest.raises(error, match=message):
        get_distill_model(teacher, student, make_config())
    assert_unchanged(teacher, before[0])
    assert_unchanged(student, before[1])


def test_graph_mode_needs_the_shape_pynative_does_not():
    teacher, student = models()
    config = _hard(KnowledgeDistillConfig()).add_inter_soft_label(_inter(shape=None))
    del config.inter_matches[0]["shape"]
    ms.set_context(mode=ms.GRAPH_MODE)
    before = snapshot(teacher), snapshot(student)
    with pytest.raises(ValueError, match=r'inter_match0 \(add_inter_soft_label config\): config in '
                                         r'"add_inter_soft_label" must has key: "shape"'):
        get_distill_model(teacher, student, config)
    assert_unchanged(teacher, before[0])
    assert_unchanged(student, before[1])
    ms.set_context(mode=ms.PYNATIVE_MODE)
    assert np.isfinite(get_distill_model(teacher, student, config)(*batch()).asnumpy())


def test_model_type_errors():
    teacher, student = models()
    config = _hard(KnowledgeDistillConfig())
    with pytest.raises(ValueError, match="The model can't be None!"):
        get_distill_model(None, student, config)
    with pytest.raises(ValueError, match="The model must be a MindSpore or PyTorch model, not str"):
        get_distill_model("teacher", student, config)
    with pytest.raises(TypeError, match="model must be a MindSpore nn.Cell instance. Not <class 'str'>"):
        get_distill_model(teacher, "student", config)
    with pytest.raises(TypeError, match="config must be KnowledgeDistillConfig, not dict."):
        get_distill_model(teacher, student, {})
    with pytest.raises(ValueError, match="the teacher and the student are the same object"):
        get_distill_model(teacher, teacher, config)
    get_distill_model(teacher, student, config.add_inter_soft_label(_inter()))
    with pytest.raises(ValueError, match="the teacher is already wrapped by a DistillDualModels"):
        get_distill_model(teacher, Classifier(8), _hard(KnowledgeDistillConfig()))


def test_mixing_frameworks_is_a_type_error():
    torch = pytest.importorskip("torch")
    teacher, student = models()
    config = _hard(KnowledgeDistillConfig())
    with pytest.raises(TypeError, match=r"teacher \(<class '.*Classifier'>\) and the student \(<class "
                                        r"'torch.nn.modules.linear.Linear'>\) must be models of the same framework"):
        get_distill_model(teacher, torch.nn.Linear(2, 2), config)
    with pytest.raises(TypeError, match=r"teacher \(<class 'torch.nn.modules.linear.Linear'>\) and the student"):
        get_distill_model(torch.nn.Linear(2, 2), student, config)
    with pytest.raises(TypeError, match=r'The custom loss "mine" .* must be a MindSpore nn.Cell'):
        get_distill_model(teacher, student, _hard(KnowledgeDistillConfig()).add_custom_loss_func(
            "mine", torch.nn.MSELoss()))
    with pytest.raises(TypeError, match=r'The custom loss "mine" .* must be a PyTorch nn.Module'):
        get_distill_model(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2),
                          KnowledgeDistillConfig().add_custom_loss_func("mine", nn.MSELoss()))
    with pytest.raises(TypeError, match="set_teacher_dtype is for PyTorch teachers"):
        get_distill_model(teacher, student, _hard(KnowledgeDistillConfig()).set_teacher_dtype(torch.float16))


def test_a_failure_half_way_through_the_set_up_restores_everything(monkeypatch):
    from msmodelslim.mindspore.knowledge_distill import dual_model

    teacher, student = models()
    before = snapshot(teacher), snapshot(student)
    calls = []

    def put_child_then_fail(parent, key, cell):
        calls.append(key)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_put_child(parent, key, cell)

    real_put_child = dual_model.put_child
    monkeypatch.setattr(dual_model, "put_child", put_child_then_fail)
    config = kd_config().add_inter_soft_label(_inter(t_module="head", s_module="head", shape=[BATCH, CLASSES]))
    with pytest.raises(KeyboardInterrupt):
        get_distill_model(teacher, student, config.set_teacher_train())
    assert_unchanged(teacher, before[0])
    assert_unchanged(student, before[1])


@pytest.mark.parametrize("config, message", [
    pytest.param(lambda: _hard(KnowledgeDistillConfig()).add_output_soft_label(
        {"t_output_idx": 1, "s_output_idx": 2, "loss_func": [{"func_name": "KDMse", "func_weight": 1}]}),
                 r"s_output_idx in output_match0 \(add_output_soft_label config\) out of range: index 2, the output "
                 r"has 2 element\(s\)", id="output-index"),
    pytest.param(lambda: _hard(KnowledgeDistillConfig()).add_inter_soft_label(_inter(t_output_idx=2)),
                 r"t_output_idx in inter_match0 \(add_inter_soft_label config\) out of range: index 2",
                 id="inter-index"),
    pytest.param(lambda: _index(2), r"output_replace_idx \(set_hard_label\) out of range: index 2",
                 id="hard-label-index"),
    pytest.param(lambda: _hard(KnowledgeDistillConfig()).add_inter_soft_label(_inter(s_module="body.0")),
                 r"inter_match0 \(add_inter_soft_label config\): the student tensor has shape \(16, 8\) and the "
                 r"teacher tensor \(16, 6\)", id="shapes-differ"),
])
def test_errors_found_when_running_name_the_match(mode, config, message):
    teacher, student = models()
    dual = get_distill_model(teacher, student, config())
    with pytest.raises(ValueError, match=message):
        dual(*batch())


def test_a_wrong_shape_names_the_match_in_graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    teacher, student = models()
    dual = get_distill_model(teacher, student, _hard(KnowledgeDistillConfig()).add_inter_soft_label(
        _inter(shape=[8, 6])))
    with pytest.raises(ValueError, match=r"inter_match0 \(add_inter_soft_label config\): the teacher tensor has "
                                         r"shape \(16, 6\) but its buffer .* has \(8, 6\)"):
        dual(*batch())


# ---------------------------------------------------------------------------------------------- one framework only
def _run_fresh(code):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_the_mindspore_path_runs_with_torch_blocked():
    out = _run_fresh("""
        import sys
        sys.modules["torch"] = None  # importing torch now raises ImportError
        import numpy as np
        import mindspore as ms
        from mindspore import Tensor, nn, ops
        from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig, get_distill_model
        ms.set_context(mode=ms.PYNATIVE_MODE); ms.set_device("CPU")

        class Net(nn.Cell):
            def __init__(self, hidden):
                super().__init__()
                self.body, self.head = nn.Dense(4, hidden), nn.Dense(hidden, 3)
            def construct(self, x, y):
                logits = self.head(ops.relu(self.body(x)))
                return ops.cross_entropy(logits, y), logits

        teacher, student = Net(16), Net(4)
        config = KnowledgeDistillConfig().set_hard_label(0.5, 0).add_output_soft_label(
            {"t_output_idx": 1, "s_output_idx": 1, "loss_func": [{"func_name": "KDCrossEntropy", "func_weight": 1}]})
        dual = get_distill_model(teacher, student, config)
        step = nn.TrainOneStepCell(dual, nn.SGD(dual.trainable_params(), learning_rate=0.1))
        x, y = Tensor(np.ones((2, 4), np.float32)), Tensor(np.array([0, 1], np.int32))
        print(float(step(x, y).asnumpy()))
        print("LOADED", [m for m in sys.modules if m.split(".")[0] == "torch" and sys.modules[m] is not None])
    """)
    assert "LOADED []" in out


def test_the_torch_path_runs_with_mindspore_blocked():
    pytest.importorskip("torch")
    out = _run_fresh("""
        import sys
        sys.modules["mindspore"] = None  # importing mindspore now raises ImportError
        import torch
        from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig, get_distill_model

        teacher, student = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
        config = KnowledgeDistillConfig().add_output_soft_label(
            {"t_output_idx": 0, "s_output_idx": 0, "loss_func": [{"func_name": "KDCrossEntropy", "func_weight": 1}]})
        dual = get_distill_model(teacher, student, config)
        loss, _, _ = dual(torch.ones(2, 4))
        loss.backward()
        print("GRAD", student.weight.grad is not None)
        print("LOADED", [m for m in sys.modules if m.split(".")[0] == "mindspore" and sys.modules[m] is not None])
    """)
    assert "GRAD True" in out and "LOADED []" in out
