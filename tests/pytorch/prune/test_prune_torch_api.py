"""PruneTorch's public API: the user's document verbatim, the original's validation, chaining and options."""
import json
import logging

import pytest
import torch
from torch import nn

from msmodelslim import set_logger_level
from msmodelslim.pytorch.prune.prune_torch import CallParams, PruneTorch
from zoo.cnn import VGG16


def count(model):
    return sum(p.numel() for p in model.parameters())


class Chain(nn.Module):
    """Conv -> BN -> ReLU -> Conv -> ReLU -> pool -> Linear -> Linear: the chains the original could prune."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv3 = nn.Conv2d(128, 128, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(128, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.conv3(self.relu(self.conv2(x))))
        x = torch.flatten(self.pool(x), 1)
        return self.fc2(self.relu(self.fc1(x)))


def test_seed_document_calls_verbatim_on_vgg16():
    from msmodelslim import set_logger_level
    set_logger_level("info")        #根据实际情况配置
    model = VGG16()
    model.eval()
    before = count(model)
    desc = PruneTorch(model, torch.ones([1, 3, 224, 224]).type(torch.float32)).prune(0.8)
    after = count(model)
    assert abs(after / before - 0.8) <= 0.02
    with torch.no_grad():
        assert model(torch.ones([1, 3, 224, 224])).shape == (1, 1000)

    model = VGG16()
    model.eval()
    PruneTorch(model, torch.ones([1, 3, 224, 224]).type(torch.float32)).prune_by_desc(desc)
    assert count(model) == after
    set_logger_level("info")


def test_analysis_plans_without_touching_the_model():
    model = Chain().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    left, desc = PruneTorch(model, torch.randn(1, 3, 16, 16)).analysis(0.6)
    assert isinstance(left, int) and left < count(model)
    assert set(model.state_dict()) == set(before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert json.loads(json.dumps(desc)) == desc
    assert "__meta__" in desc and desc["__meta__"]["parameters"]["after"] == left


def test_prune_returns_desc_and_left_matches_model():
    model = Chain().eval()
    pruner = PruneTorch(model, torch.randn(1, 3, 16, 16))
    left, planned = pruner.analysis(0.6)
    desc = pruner.prune(0.6)
    assert desc == planned
    assert count(model) == left


def test_inputs_types():
    model = Chain().eval()
    x = torch.randn(1, 3, 16, 16)
    for inputs in (x, [x], (x,), CallParams(x), CallParams(x=x)):
        assert PruneTorch(model, inputs).network is model
    with pytest.raises(TypeError, match="inputs must be type Tensor, list, tuple, CallParams"):
        PruneTorch(model)
    with pytest.raises(TypeError, match="inputs must be type Tensor, list, tuple, CallParams"):
        PruneTorch(model, {"x": x})
    with pytest.raises(ValueError, match="network must be torch.nn.Module or Dag"):
        PruneTorch("vgg16", x)


def test_train_mode_is_restored_and_bn_statistics_untouched():
    model = Chain().train()
    stats = model.bn1.running_mean.clone()
    pruner = PruneTorch(model, torch.randn(4, 3, 16, 16))
    assert model.training and model.bn1.training
    assert torch.equal(model.bn1.running_mean, stats)
    pruner.analysis(0.7)
    assert model.training
    assert torch.equal(model.bn1.running_mean, stats)


def test_setters_validate_and_chain():
    pruner = PruneTorch(Chain().eval(), torch.randn(1, 3, 16, 16))
    assert pruner.set_importance_evaluation_function(lambda w: w.abs().mean().item()) is pruner
    assert pruner.set_node_reserved_ratio(0.7) is pruner
    assert pruner.set_importance_evaluation_function("l2") is pruner
    with pytest.raises(ValueError, match="importance evaluation function must callable"):
        pruner.set_importance_evaluation_function(3)
    with pytest.raises(ValueError, match="one of"):
        pruner.set_importance_evaluation_function("magnitude")
    with pytest.raises(TypeError, match="node max prune ratio must be float"):
        pruner.set_node_reserved_ratio(1)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"node max prune ratio must in \(0, 1\)"):
            pruner.set_node_reserved_ratio(bad)


def test_ratio_and_un_prune_list_validation(caplog):
    pruner = PruneTorch(Chain().eval(), torch.randn(1, 3, 16, 16))
    with pytest.raises(TypeError, match="prune ratio must be float"):
        pruner.analysis(1)
    with pytest.raises(TypeError, match="prune ratio must be float"):
        pruner.prune("0.5")
    with pytest.raises(TypeError, match="un_prune_list must be a list."):
        pruner.analysis(0.7, un_prune_list=(0, -1))
    with pytest.raises(ValueError, match="Element of un_prune_list must be str or int."):
        pruner.analysis(0.7, un_prune_list=[0, 1.5])
    log = logging.getLogger("msmodelslim")
    log.addHandler(caplog.handler)
    try:
        pruner.analysis(0.3)
        pruner.analysis(0.7, un_prune_list=[0, 99])
    finally:
        log.removeHandler(caplog.handler)
    assert "The prune ratio is abnormal. Please check." in caplog.text
    assert "out of range" in caplog.text


def test_default_protects_first_and_last_layers_and_the_list_is_not_mutated():
    model = Chain().eval()
    _, desc = PruneTorch(model, torch.randn(1, 3, 16, 16)).analysis(0.5)
    assert "output" not in desc.get("conv1", {})  # first layer keeps its channels
    assert "output" not in desc.get("fc2", {})  # last layer keeps its classes
    protect = [0, -1, "conv2"]
    _, desc = PruneTorch(model, torch.randn(1, 3, 16, 16)).analysis(0.5, un_prune_list=protect)
    assert protect == [0, -1, "conv2"]
    assert "output" not in desc.get("conv2", {})
    _, desc = PruneTorch(model, torch.randn(1, 3, 16, 16)).analysis(0.5, un_prune_list=[])
    assert "output" in desc["conv1"]


@pytest.mark.parametrize("align", [16, 8])
def test_alignment_and_node_cap(align):
    model = Chain().eval()
    pruner = PruneTorch(model, torch.randn(1, 3, 16, 16), align=align).set_node_reserved_ratio(0.5)
    desc = pruner.prune(0.5, un_prune_list=[])
    for name in ("conv1", "conv2", "conv3", "fc1"):
        module = getattr(model, name)
        kept = module.out_channels if hasattr(module, "out_channels") else module.out_features
        original = len(desc[name]["output"][1])
        assert kept % align == 0 and kept >= align
        assert (original - kept) / original <= 0.5


def test_a_layer_never_drops_below_one_alignment_unit():
    model = Chain().eval()
    PruneTorch(model, torch.randn(1, 3, 16, 16), align=64).set_node_reserved_ratio(0.99).prune(0.05, [])
    assert model.conv1.out_channels == 64  # 64 channels: cannot go below one unit
    assert model.conv2.out_channels == 64


class WideMiddle(nn.Module):
    """A 48-channel hidden layer: with an alignment of 16 it can only drop to 32 (fc2 keeps its outputs)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 48), nn.Linear(48, 64)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_a_budget_between_two_aligned_steps_is_reported_with_the_step_that_overshoots(caplog):
    """A third of the hidden layer is the smallest step: 80 % is out of reach, and the INFO line says which step
    would remove too much and what it would keep - the figure the user sees after asking for it."""
    model = WideMiddle().eval()
    log = logging.getLogger("msmodelslim")
    log.addHandler(caplog.handler)
    try:
        PruneTorch(model, torch.randn(2, 64), align=16).analysis(0.8, un_prune_list=["fc2"])
    finally:
        log.removeHandler(caplog.handler)
    line = next(line for line in caplog.text.splitlines() if "Pruning stopped early" in line)
    step = PruneTorch(WideMiddle().eval(), torch.randn(2, 64), align=16)
    before = sum(p.numel() for p in step._network.parameters())
    step.prune(0.6, un_prune_list=["fc2"])
    after = sum(p.numel() for p in step._network.parameters())
    assert "kept 100.0% of the parameters instead of 80.0%" in line
    assert f"from 48 to 32 channels, would keep {after / before:.1%}" in line


class ThreeBranches(nn.Module):
    """Three hidden layers side by side; with an alignment of 16 each can take one step: a (its hidden units feed
    two outputs, and are the least important) saves 400 parameters, b and c 272 each."""

    def __init__(self):
        super().__init__()
        self.a_in, self.a_out1, self.a_out2 = nn.Linear(8, 48), nn.Linear(48, 8), nn.Linear(48, 8)
        self.b_in, self.b_out = nn.Linear(8, 32), nn.Linear(32, 8)
        self.c_in, self.c_out = nn.Linear(8, 32), nn.Linear(32, 8)
        with torch.no_grad():
            for layer in (self.a_in, self.a_out1, self.a_out2):
                layer.weight.mul_(0.01)

    def forward(self, x):
        a = torch.relu(self.a_in(x))
        b, c = torch.relu(self.b_in(x)), torch.relu(self.c_in(x))
        return self.a_out1(a) + self.a_out2(a) + self.b_out(b) + self.c_out(c)


def test_a_budget_only_a_mix_of_steps_reaches_is_met_exactly():
    """Taking the least important step first (a) leaves no step that lands on the budget (a + b overshoots by
    5.5 points, a alone stops 6.9 points short); b + c lands on it exactly."""
    torch.manual_seed(0)
    model = ThreeBranches().eval()
    before = count(model)
    ratio = (before - 2 * 272) / before
    PruneTorch(model, torch.randn(4, 8), align=16).prune(ratio, un_prune_list=["a_out1", "a_out2", "b_out", "c_out"])
    assert count(model) == before - 2 * 272
    assert (model.a_in.out_features, model.b_in.out_features, model.c_in.out_features) == (48, 16, 16)


def test_a_mix_of_steps_is_found_where_two_layers_would_save_as_much_alone():
    """Four hidden layers in a chain at an alignment of 16: two of them (24 and 40 wide) save exactly as much
    alone, so a search keeping only the cheapest mix per saving would never try the one that lands."""
    torch.manual_seed(0)
    widths = (16, 24, 40, 32, 48)
    model = nn.Sequential(*[layer for a, b in zip(widths, widths[1:]) for layer in (nn.Linear(a, b), nn.ReLU())],
                          nn.Linear(48, 5)).eval()
    before = count(model)
    PruneTorch(model, torch.randn(2, 16), align=16).prune(0.5, un_prune_list=["8"])
    assert abs(count(model) / before - 0.5) <= 0.02


def test_custom_importance_callable_gets_original_slices():
    model = Chain().eval()
    seen = []

    def score(weight):
        seen.append(tuple(weight.shape))
        return weight.abs().sum().item()

    PruneTorch(model, torch.randn(1, 3, 16, 16)).set_importance_evaluation_function(score).analysis(0.6)
    assert (128,) in seen  # fc1.weight[i] is a row of 128 inputs
    assert (1, 64, 3, 3) in seen  # conv2.weight[[c]]


def test_custom_importance_decides_what_goes():
    model = Chain().eval()
    with torch.no_grad():
        model.fc1.weight[:100].mul_(100.0)  # by |w|, these neurons matter most

    pruner = PruneTorch(model, torch.randn(1, 3, 16, 16)).set_importance_evaluation_function(
        lambda w: -w.abs().mean().item())  # ... but this criterion prefers the small ones
    _, desc = pruner.analysis(0.95, un_prune_list=[0, -1, "conv2", "conv3"])
    mask = desc["fc1"]["output"][1]
    assert mask.count("x") >= 64
    assert mask[100:].count("x") == 0  # only the rows the criterion ranks lowest went


def test_summary_table():
    model = Chain().eval()
    pruner = PruneTorch(model, torch.randn(1, 3, 16, 16))
    assert pruner.summary() == ""
    pruner.prune(0.6)
    text = pruner.summary()
    assert "conv2" in text and "->" in text and "MACs" in text and "parameters:" in text


def test_taylor_needs_gradients_or_loss():
    model = Chain().eval()
    x = torch.randn(2, 3, 16, 16)
    pruner = PruneTorch(model, x).set_importance_evaluation_function("taylor")
    with pytest.raises(ValueError, match="taylor"):
        pruner.analysis(0.7)
    pruner.set_importance_evaluation_function("taylor", loss_fn=lambda out: out.square().mean())
    _, desc = pruner.analysis(0.7)
    assert all(p.grad is None for p in model.parameters())  # gradients were restored
    assert desc["__meta__"]["parameters"]["after"] < count(model)


@pytest.mark.parametrize("method", ["l1", "l2", "bn_scale", "activation", "random"])
def test_builtin_importances_reach_the_target(method):
    model = Chain().eval()
    before = count(model)
    PruneTorch(model, torch.randn(2, 3, 16, 16)).set_importance_evaluation_function(method).prune(0.6)
    assert abs(count(model) / before - 0.6) <= 0.02


def test_logger_level_honoured(caplog):
    model = Chain().eval()
    log = logging.getLogger("msmodelslim")
    log.addHandler(caplog.handler)
    try:
        set_logger_level("error")
        PruneTorch(model, torch.randn(1, 3, 16, 16)).prune(0.7)
        quiet = caplog.text
        set_logger_level("info")
        PruneTorch(Chain().eval(), torch.randn(1, 3, 16, 16)).prune(0.7)
    finally:
        log.removeHandler(caplog.handler)
        set_logger_level("info")
    assert "node name" not in quiet
    assert "node name: conv2 chn: 128 -> " in caplog.text
