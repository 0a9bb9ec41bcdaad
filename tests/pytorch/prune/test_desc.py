"""The desc: format, replay without tracing, validation, original-format compatibility, transactions."""
import copy
import json

import pytest
import torch
from torch import nn

from msmodelslim.pytorch.prune import desc as desc_format
from msmodelslim.pytorch.prune.prune_torch import PruneTorch
from zoo import cnn


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model, saved):
    now = model.state_dict()
    return set(now) == set(saved) and all(now[k].shape == v.shape and torch.equal(now[k], v) for k, v in saved.items())


@pytest.fixture
def resnet_and_desc():
    torch.manual_seed(0)
    model = cnn.resnet18(10).eval()
    x = torch.randn(1, 3, 64, 64)
    desc = PruneTorch(copy.deepcopy(model), x).analysis(0.6)[1]
    return model, x, desc


def test_format_is_documented_and_self_contained(resnet_and_desc):
    model, _, desc = resnet_and_desc
    meta = desc["__meta__"]
    assert meta["format"] == "msmodelslim-prune-desc" and meta["version"] == 1
    assert meta["fingerprint"] == desc_format.fingerprint(model)
    assert meta["parameters"]["before"] == sum(p.numel() for p in model.parameters())
    for name, entry in desc.items():
        if name == "__meta__":
            continue
        module = model.get_submodule(name)
        for role, (kept, mask) in entry.items():
            assert set(mask) <= {"-", "x"} and mask.count("-") == kept
        if isinstance(module, nn.BatchNorm2d):
            assert list(entry) == ["input"]  # per-channel layers use "input", as the original
    # every layer whose shape changes is listed: a residual stream prunes convs, BNs and the downsample path
    assert any(n.startswith("layer2.0.downsample") for n in desc)


def test_replay_needs_no_trace(resnet_and_desc, monkeypatch):
    model, x, desc = resnet_and_desc
    import msmodelslim.pytorch.prune.graph as graph

    def no_trace(*args, **kwargs):
        raise AssertionError("prune_by_desc must not trace the model")

    monkeypatch.setattr(graph, "torch_pruning_groups", no_trace)
    PruneTorch(model, x).prune_by_desc(json.loads(json.dumps(desc)))
    assert sum(p.numel() for p in model.parameters()) == desc["__meta__"]["parameters"]["after"]


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: d.update({"layer9.conv": {"output": [1, "-"]}}), "layer9.conv"),
    (lambda d: d["layer1.0.conv1"].update({"output": [3, "--x"]}), "layer1.0.conv1"),
    (lambda d: d["layer1.0.conv1"].update({"output": [60, "-" * 64]}), "layer1.0.conv1"),
    (lambda d: d["layer1.0.conv1"].update({"output": [0, "x" * 64]}), "keeps no channel"),
    (lambda d: d["layer1.0.conv1"].update({"sideways": [64, "-" * 64]}), "layer1.0.conv1"),
    # an attribute the weights' shape sets: the masks decide it, a patch may not contradict them
    (lambda d: d["__meta__"]["patches"].update({"layer1.0.conv1": {"out_channels": 2}}), "follows the shape"),
    (lambda d: d["__meta__"]["axes"].update({"layer1.0.conv1.weight": 0}), "has no entry for it"),
])
def test_a_desc_that_does_not_belong_is_refused_and_the_model_untouched(resnet_and_desc, corrupt, message):
    model, x, desc = resnet_and_desc
    desc.setdefault("layer1.0.conv1", {"output": [64, "-" * 64]})
    corrupt(desc)
    saved = state(model)
    with pytest.raises(ValueError, match=message) as info:
        PruneTorch(model, x).prune_by_desc(desc)
    assert "Please Check whether desc belongs to the network." in str(info.value)
    assert same_state(model, saved)


def test_desc_of_another_model_names_first_mismatch_and_rolls_back():
    torch.manual_seed(0)
    big = cnn.resnet50(10).eval()
    desc = PruneTorch(big, torch.randn(1, 3, 64, 64)).analysis(0.5)[1]
    small = cnn.resnet18(10).eval()
    saved = state(small)
    with pytest.raises(ValueError, match="Module '"):
        PruneTorch(small, torch.randn(1, 3, 64, 64)).prune_by_desc(desc)
    assert same_state(small, saved)


def test_failure_while_running_the_pruned_model_restores_everything(resnet_and_desc):
    model, x, _ = resnet_and_desc
    # a desc that is valid layer by layer but breaks the residual add: conv2 of a block shrinks, its identity not
    desc = {"layer1.0.conv2": {"output": [48, "-" * 48 + "x" * 16]}, "layer1.0.bn2": {"input": [48, "-" * 48 + "x" * 16]}}
    saved = state(model)
    modules_before = {n: (type(m), getattr(m, "out_channels", None)) for n, m in model.named_modules()}
    weight_object = model.layer1[0].conv2.weight
    with pytest.raises(ValueError, match="fails to run"):
        PruneTorch(model, x).prune_by_desc(desc)
    assert same_state(model, saved)
    assert {n: (type(m), getattr(m, "out_channels", None)) for n, m in model.named_modules()} == modules_before
    assert model.layer1[0].conv2.weight is weight_object  # the very same Parameter objects are back
    assert model.layer1[0].bn2.num_features == 64


def test_validation_of_type_and_characters(resnet_and_desc):
    model, x, desc = resnet_and_desc
    pruner = PruneTorch(model, x)
    with pytest.raises(TypeError, match="parameter desc must be dict"):
        pruner.prune_by_desc(json.dumps(desc))
    bad = dict(desc)
    bad["conv1;rm -rf"] = {"output": [1, "-"]}
    with pytest.raises(ValueError, match="desc contains invalid characters."):
        pruner.prune_by_desc(bad)
    with pytest.raises(ValueError, match="desc contains invalid characters."):
        pruner.prune_by_desc({"a" * 600: {"output": [1, "-"]}})


def test_model_without_parameters():
    with pytest.raises(ValueError, match="network has no params"):
        PruneTorch(nn.ReLU(), torch.randn(2, 3)).prune_by_desc({})


def test_desc_written_by_the_original_applies():
    """The original's own format: Conv/Linear "output"/"input" masks, BN "input", no __meta__."""

    class Original(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 3)
            self.conv2 = nn.Conv2d(32, 64, 3)
            self.bn2 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.conv3 = nn.Conv2d(64, 16, 3)

        def forward(self, x):
            return self.conv3(self.relu(self.bn2(self.conv2(self.conv1(x)))))

    model = Original().eval()
    mask = "x--x" * 16
    desc = {"conv2": {"output": [32, mask]}, "bn2": {"input": [32, mask]}, "conv3": {"input": [32, mask]}}
    keep = torch.tensor([i for i, c in enumerate(mask) if c == "-"])
    expected_w3 = model.conv3.weight[:, keep].clone()
    PruneTorch(model, torch.randn(1, 3, 16, 16)).prune_by_desc(desc)
    assert model.conv2.out_channels == 32 and isinstance(model.conv2.in_channels, int)
    assert model.bn2.num_features == 32 and model.bn2.running_mean.shape == (32,)
    assert torch.equal(model.conv3.weight, expected_w3)


def test_tied_embeddings_stay_tied():
    from msmodelslim.pytorch.prune.prune_torch import CallParams
    from zoo import hf

    model, batch = hf.gpt2()
    PruneTorch(model, CallParams(**batch)).prune(0.6)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.wte.weight.shape[1] < 128
