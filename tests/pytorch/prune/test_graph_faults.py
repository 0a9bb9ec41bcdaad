"""Where torch-pruning's channel index maps fail, only the groups through the failing operation are protected; the
rest of the model is still pruned (before, the whole model was refused with a GraphTraceError)."""
import copy
import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch_pruning import _helpers
from torch_pruning.dependency import index_mapping

from msmodelslim.pytorch.prune import graph_faults
from msmodelslim.pytorch.prune.graph import torch_pruning_groups
from msmodelslim.pytorch.prune.prune_torch import PruneTorch
from msmodelslim.pytorch.utils.calibration import CallParams, as_call_params


class LinearAttentionByTokens(nn.Module):
    """A recurrent linear attention written as a loop over tokens whose outputs are concatenated along the tokens
    (MiniMax, Jamba): torch-pruning 1.6.1 cannot infer the channels of that concatenation and raises TypeError
    while building its graph. An MLP after it is ordinary."""

    def __init__(self, width=16):
        super().__init__()
        self.width = width
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.fc1 = nn.Linear(width, 64)
        self.fc2 = nn.Linear(64, width)

    def forward(self, x):
        q, k, v = self.qkv(x).split(self.width, dim=-1)
        state = torch.zeros(x.shape[0], self.width, self.width)
        outputs = []
        for t in range(x.shape[1]):
            state = 0.9 * state + k[:, t:t + 1].transpose(-1, -2) @ v[:, t:t + 1]
            outputs.append(q[:, t:t + 1] @ state)
        h = x + self.out(torch.cat(outputs, dim=-2))
        return h + self.fc2(torch.relu(self.fc1(h)))


class RepeatedKeyValueHeads(nn.Module):
    """Grouped-query attention that repeats its key/value heads with expand + reshape: torch-pruning maps those
    channels back with unknown roots (None), which used to end the whole graph build with a TypeError."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 8), nn.Linear(16, 8)
        self.o = nn.Linear(16, 16)
        self.fc1, self.fc2 = nn.Linear(16, 96), nn.Linear(96, 16)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, 4, 4).transpose(1, 2)
        k = self.k(x).view(b, t, 2, 4).transpose(1, 2)[:, :, None].expand(b, 2, 2, t, 4).reshape(b, 4, t, 4)
        v = self.v(x).view(b, t, 2, 4).transpose(1, 2)[:, :, None].expand(b, 2, 2, t, 4).reshape(b, 4, t, 4)
        attended = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        h = x + self.o(attended.transpose(1, 2).reshape(b, t, 16))
        return h + self.fc2(torch.relu(self.fc1(h)))


def _failing_map():
    return index_mapping._GQAIndexMapping(repeat=0, head_dim=0, reverse=True)  # divides by head_dim * repeat


def test_a_failing_map_gives_an_unknown_index_only_inside_the_block():
    index = [_helpers._HybridIndex(idx=3, root_idx=3)]
    updates = {name: getattr(index_mapping, name) for name in dir(index_mapping) if name.startswith("update_")}
    with pytest.raises(ZeroDivisionError):
        _failing_map()(index)
    failed = {}
    with graph_faults.failing_soft(failed) as recorded:
        assert recorded is failed
        assert _failing_map()(index) == [graph_faults.UNKNOWN]
        assert _failing_map()([graph_faults.UNKNOWN]) == [graph_faults.UNKNOWN]  # stays unknown: the walk ends
    with pytest.raises(ZeroDivisionError):
        _failing_map()(index)
    assert {name: getattr(index_mapping, name) for name in updates} == updates


def test_the_graph_builds_and_protects_only_the_groups_through_the_failing_concatenation():
    model = LinearAttentionByTokens()
    groups = {g.name: g for g in torch_pruning_groups(model, as_call_params(CallParams(torch.randn(2, 5, 16))))}
    assert groups["qkv"].protected and graph_faults.UNMAPPED in groups["qkv"].protected
    assert not groups["fc1"].protected


@pytest.mark.parametrize("build", [LinearAttentionByTokens, RepeatedKeyValueHeads])
def test_such_models_are_pruned_elsewhere_and_still_run(build, caplog):
    torch.manual_seed(0)
    model, x = build(), torch.randn(2, 5, 16)
    fresh, before = copy.deepcopy(model), sum(p.numel() for p in model.parameters())
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        desc = PruneTorch(model, x, engine="torch-pruning").prune(0.8)
    assert model.fc1.out_features < 64 if build is LinearAttentionByTokens else model.fc1.out_features < 96
    assert sum(p.numel() for p in model.parameters()) < before
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 5, 16)
    assert "Protected from pruning" in caplog.text
    PruneTorch(fresh, x, engine="torch-pruning").prune_by_desc(desc)
    torch.testing.assert_close(fresh(x), out)


def test_keys_and_values_repeated_by_expand_are_named_when_protected():
    model = RepeatedKeyValueHeads()
    groups = torch_pruning_groups(model, as_call_params(CallParams(torch.randn(2, 5, 16))))
    reasons = " ".join(g.protected for g in groups if g.protected)
    assert "k (channels the dependency graph cannot trace to their layer)" in reasons
    assert "_ElementWiseOp" not in reasons  # operations are not named as layers


def test_the_walk_meets_a_permuted_index_list_as_the_same_only_inside_the_block():
    from torch_pruning.dependency.group import Group

    original = Group.has_pruning_op
    group, dep = Group(), SimpleNamespace(target="node", handler="prune")
    group._group = [(dep, [_helpers._HybridIndex(0, 0), _helpers._HybridIndex(1, 1)])]
    swapped = [_helpers._HybridIndex(1, 1), _helpers._HybridIndex(0, 0)]
    with graph_faults.order_free_walk():
        assert group.has_pruning_op(dep, swapped)
        assert not group.has_pruning_op(dep, swapped[:1])
    assert Group.has_pruning_op is original and not group.has_pruning_op(dep, swapped)
