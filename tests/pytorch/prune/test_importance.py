"""Importance criteria pick the channels that matter least; dead channels go first and change nothing."""
import pytest
import torch
from torch import nn

from msmodelslim.pytorch.prune.prune_torch import PruneTorch
from zoo import cnn


def kill_channels(block, channels):
    """Make channels of a bottleneck's inner conv dead: zero weights and BN affine, so they output exactly 0."""
    with torch.no_grad():
        block.conv1.weight[channels] = 0
        block.bn1.weight[channels] = 0
        block.bn1.bias[channels] = 0


@pytest.mark.parametrize("method", ["l1", "l2", "bn_scale", "activation"])
def test_dead_channels_are_removed_first_and_outputs_do_not_change(method):
    torch.manual_seed(0)
    model = cnn.resnet50(10, width=16).eval()
    block = model.layer3[1]
    dead = list(range(0, 64, 4))  # 16 of the 64 inner channels
    kill_channels(block, dead)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
    # protect everything but this block's first conv so that exactly its dead channels are the cheapest
    others = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n != "layer3.1.conv1"]
    pruner = PruneTorch(model, x, align=16).set_importance_evaluation_function(method)
    # conv1 loses 16 rows of 256 inputs, bn1 16 weights and biases, conv2 16 input slices of 64 x 3 x 3
    target = 1 - 16 * (256 + 2 + 64 * 9) / sum(p.numel() for p in model.parameters())
    desc = pruner.prune(float(target), un_prune_list=others)
    mask = desc["layer3.1.conv1"]["output"][1]
    removed = [i for i, c in enumerate(mask) if c != "-"]
    if method == "activation":
        # on these inputs live channels of a random network can be silent too (ReLU); only silent ones may go,
        # which the unchanged output below checks
        assert len(removed) == len(dead)
    else:
        assert removed == dead
    with torch.no_grad():
        assert torch.allclose(model(x), reference, atol=1e-4)


def test_random_is_reproducible_and_differs_from_l1():
    torch.manual_seed(0)
    model = cnn.resnet18(10).eval()
    x = torch.randn(1, 3, 64, 64)
    first = PruneTorch(model, x).set_importance_evaluation_function("random").analysis(0.6)[1]
    second = PruneTorch(model, x).set_importance_evaluation_function("random").analysis(0.6)[1]
    l1 = PruneTorch(model, x).analysis(0.6)[1]
    assert first == second
    assert first != l1


def test_same_inputs_same_plan():
    torch.manual_seed(0)
    model = cnn.MobileNetV2(10).eval()
    x = torch.randn(1, 3, 64, 64)
    assert PruneTorch(model, x).analysis(0.6)[1] == PruneTorch(model, x).analysis(0.6)[1]


def test_scores_are_normalised_per_group():
    from msmodelslim.pytorch.prune.importance import group_importance

    torch.manual_seed(0)
    model = cnn.resnet18(10).eval()
    with torch.no_grad():
        model.layer4[0].conv1.weight.mul_(1000.0)  # one layer on a very different scale
    x = torch.randn(1, 3, 64, 64)
    pruner = PruneTorch(model, x)
    for score, group in zip(group_importance(model, pruner.dag, "l1"), pruner.dag):
        expected = (torch.arange(group.size, dtype=torch.float64) + 0.5) / group.size
        assert torch.equal(score.sort().values, expected)  # weight criteria: ranks within the group
    for score in group_importance(model, pruner.dag, "activation", call=pruner._call):
        assert score.mean().item() == pytest.approx(1.0)  # activations: divided by the group mean
