"""Work the calibration skips changes nothing: a block's statistics pass ends once its last sparsified layer has
read its input, the check that blocks chain stops at the last block's input, and SparseGPT's inverse-Hessian factor
comes from one factorisation - each gives what the long way gives."""
import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from msmodelslim.pytorch.sparse.sparse_tools import SparseConfig
from msmodelslim.pytorch.sparse.sparse_tools.engine import Sparsifier
from msmodelslim.pytorch.sparse.sparse_tools.methods import sparsegpt
from msmodelslim.pytorch.sparse.sparse_tools.stats import LayerStats, NonFiniteActivation
from msmodelslim.pytorch.utils.sequential import BlockDone, StopAfterFirstBatchCalls, blocks_chain, find_blocks

WIDTH = 16


class Block(nn.Module):
    """up -> relu -> down, plus a residual; ``branchy``: a second up projection used only by some batches (those
    whose sum is positive); ``twice``: ``down`` runs twice."""

    def __init__(self, branchy=False, twice=False):
        super().__init__()
        self.up, self.down = nn.Linear(WIDTH, 2 * WIDTH), nn.Linear(2 * WIDTH, WIDTH)
        self.other = nn.Linear(WIDTH, 2 * WIDTH) if branchy else None
        self.twice = twice

    def forward(self, x):
        hidden = torch.relu(self.up(x))
        if self.other is not None and float(x.sum()) > 0:
            hidden = hidden + self.other(x)
        out = self.down(hidden)
        if self.twice:
            out = out + self.down(hidden * 0.5)
        return x + out


class Stack(nn.Module):
    def __init__(self, between=None, **block_options):
        super().__init__()
        self.blocks = nn.ModuleList(Block(**block_options) for _ in range(3))
        self.head = nn.Linear(WIDTH, 4)
        self.between = between  # index of the block after which the hidden states are doubled (not chained)

    def forward(self, x):
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index == self.between:
                x = x * 2
        return self.head(x)


def batches(count=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(6, WIDTH, generator=generator) + (1 if i % 2 else -1) for i in range(count)]


def sparsify(model, options, data, monkeypatch=None, copy_model=True):
    """A sparsified copy of ``model`` (or ``model`` itself); with ``monkeypatch``, no batch of a statistics pass is
    cut short."""
    model = copy.deepcopy(model) if copy_model else model
    with pytest.MonkeyPatch.context() as patch:
        if monkeypatch is not None:
            patch.setattr(StopAfterFirstBatchCalls, "called", lambda self, name: self.calls.append(name))
        Sparsifier(model, SparseConfig(**options), data).run()
    return model


def count_runs(module):
    runs = [0]
    module.register_forward_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    return runs


def test_a_blocks_last_layer_is_not_run_while_its_statistics_are_gathered(monkeypatch):
    torch.manual_seed(0)
    data = batches()
    runs = {}
    for stopping in (True, False):
        model = Stack()
        counters = [count_runs(block.down) for block in model.blocks]
        sparsify(model, {"method": "hessian"}, data, monkeypatch=None if stopping else monkeypatch, copy_model=False)
        runs[stopping] = [counter[0] for counter in counters]
    # in the statistics pass the first batch runs whole and the other batches stop before `down`
    assert [whole - cut for whole, cut in zip(runs[False], runs[True])] == [len(data) - 1] * 3


@pytest.mark.parametrize("block_options", [{}, {"branchy": True}, {"twice": True}])
@pytest.mark.parametrize("options", [{"method": "hessian"}, {"method": "magnitude"},
                                     {"method": "hessian", "true_sequential": True}])
def test_stopping_early_gives_the_result_of_whole_passes(block_options, options, monkeypatch):
    torch.manual_seed(1)
    model = Stack(**block_options)
    data = batches()
    fast = sparsify(model, options, data)
    slow = sparsify(model, options, data, monkeypatch=monkeypatch)
    for (name, a), b in zip(fast.state_dict().items(), slow.state_dict().values()):
        assert torch.equal(a, b), name


def test_stopper_follows_the_first_batch():
    stopper = StopAfterFirstBatchCalls(["a", "b", "c"])
    stopper.start()
    for name in "abc":
        stopper.called(name)  # the first batch never stops
    stopper.start()
    stopper.called("a")
    stopper.called("b")
    with pytest.raises(BlockDone):
        stopper.called("c")
    stopper.start()
    for name in "bac":  # another order: not the first batch's calls, so no stop
        stopper.called(name)


def test_stopper_never_stops_when_the_first_batch_missed_a_layer():
    stopper = StopAfterFirstBatchCalls(["a", "b", "c"])
    stopper.start()
    stopper.called("a")
    stopper.called("c")
    for _ in range(3):
        stopper.start()
        for name in "ac":
            stopper.called(name)


@pytest.mark.parametrize("between, chained", [(None, True), (0, False), (1, False), (2, True)])
def test_blocks_chain_sees_code_between_any_two_blocks(between, chained):
    """Code after the last block (the head, or anything else) does not break the chain; code between two blocks
    does, the last two included, although the check stops at the last block's input."""
    model = Stack(between=between)
    assert blocks_chain(model, find_blocks(model), batches(1)[0]) is chained


class NeedsFullBatch(Stack):
    """Fails on fewer than 6 samples; doubles the hidden states between blocks 0 and 1."""

    def forward(self, x):
        if x.shape[0] < 6:
            raise ValueError("this model needs 6 samples")
        return super().forward(x)


def test_blocks_chain_runs_one_sample_and_falls_back_to_the_batch():
    model = Stack(between=1)
    sizes = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    assert blocks_chain(model, find_blocks(model), batches(1)[0]) is False
    assert sizes == [1]
    strict = NeedsFullBatch(between=0)
    assert blocks_chain(strict, find_blocks(strict), batches(1)[0]) is False  # found on the whole batch
    chained = NeedsFullBatch()
    assert blocks_chain(chained, find_blocks(chained), batches(1)[0]) is True
    assert blocks_chain(strict, find_blocks(strict), batches(1)[0][:2]) is True  # fails either way: calibration says


def test_code_between_blocks_gives_whole_passes_with_the_same_statistics():
    torch.manual_seed(2)
    model = Stack(between=1)
    data = batches()
    result = sparsify(model, {"method": "hessian"}, data)
    assert all((block.up.weight == 0).float().mean() == 0.5 for block in result.blocks)


@settings(max_examples=40, deadline=None)
@given(columns=st.integers(1, 48), rows=st.integers(1, 96), percdamp=st.sampled_from([0.01, 0.1, 1.0]),
       seed=st.integers(0, 2**16))
def test_inverse_hessian_factor_is_the_upper_cholesky_factor_of_the_damped_inverse(columns, rows, percdamp, seed):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(rows, columns, generator=generator, dtype=torch.float64)
    hessian = inputs.T @ inputs + 1e-3 * torch.eye(columns, dtype=torch.float64)
    factor = sparsegpt.inverse_hessian_factor(hessian, percdamp)
    damped = hessian + sparsegpt.damping(hessian, percdamp) * torch.eye(columns, dtype=torch.float64)
    assert torch.equal(factor, factor.triu())
    assert bool((torch.diagonal(factor) > 0).all())
    torch.testing.assert_close(factor.T @ factor @ damped, torch.eye(columns, dtype=torch.float64),
                               rtol=0, atol=1e-6)


def textbook_sparsegpt(weight, hessian, sparsity, blocksize, percdamp=0.01):
    """SparseGPT's Algorithm 1 as written: one column at a time, with the whole inverse Hessian (float64)."""
    weight = weight.double().clone()
    columns = weight.shape[1]
    damped = hessian.double() + percdamp * torch.diagonal(hessian).mean() * torch.eye(columns, dtype=torch.float64)
    upper = torch.linalg.cholesky(torch.linalg.inv(damped), upper=True)
    mask = torch.zeros_like(weight, dtype=torch.bool)
    for start in range(0, columns, blocksize):
        end = min(start + blocksize, columns)
        saliency = weight[:, start:end].square() / torch.diagonal(upper)[start:end].square()
        count = int(saliency.numel() * sparsity)
        order = torch.argsort(saliency.flatten(), stable=True)[:count]
        block_mask = torch.zeros(saliency.numel(), dtype=torch.bool)
        block_mask[order] = True
        mask[:, start:end] = block_mask.view_as(saliency)
        for column in range(start, end):
            error = weight[:, column] * mask[:, column] / upper[column, column]
            weight[:, column:] -= error.unsqueeze(1) * upper[column, column:].unsqueeze(0)
    return weight.masked_fill(mask, 0), mask


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 20), columns=st.integers(2, 40), blocksize=st.sampled_from([4, 16, 128]),
       seed=st.integers(0, 2**16))
def test_sparsegpt_follows_the_papers_algorithm(rows, columns, blocksize, seed):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(4 * columns, columns, generator=generator)
    stats = LayerStats("x", columns, "cpu", hessian=True)
    stats.add(inputs)
    weight = torch.randn(rows, columns, generator=generator)
    new, mask = sparsegpt.prune(weight, stats, 0.5, None, {"blocksize": blocksize})
    expected_new, expected_mask = textbook_sparsegpt(weight, stats.symmetric_hessian(), 0.5, blocksize)
    # float32 against float64: a weight whose saliency ties to rounding may swap with its neighbour
    assert (mask != expected_mask).float().mean() <= 0.05
    if torch.equal(mask, expected_mask):
        torch.testing.assert_close(new.double(), expected_new, rtol=1e-4, atol=1e-4)


def test_overflowing_inputs_are_named_as_too_large_not_as_nan():
    stats = LayerStats("huge", 4, "cpu")
    with pytest.raises(NonFiniteActivation, match="too large"):
        stats.add(torch.full((2, 4), 1e20))
    with pytest.raises(NonFiniteActivation, match="NaN or inf"):
        stats.add(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
    assert stats.tokens == 0
