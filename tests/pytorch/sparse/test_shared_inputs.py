"""Layers that read the same input share one set of statistics and SparseGPT solves them as one stacked matrix;
the result is the per-layer result, bit for bit."""
import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from msmodelslim.pytorch.sparse.sparse_tools import SparseConfig
from msmodelslim.pytorch.sparse.sparse_tools.engine import Sparsifier, run_dataset
from msmodelslim.pytorch.sparse.sparse_tools.methods import sparsegpt
from msmodelslim.pytorch.sparse.sparse_tools.stats import LayerStats
from zoo import hf


def sparsify(model, config, data, share_inputs):
    model = copy.deepcopy(model)
    results = Sparsifier(model, config, data, share_inputs=share_inputs).run()
    return model, results


@pytest.mark.parametrize("options", [{"method": "hessian"}, {"method": "hessian", "pattern": "2:4"},
                                     {"method": "hessian", "uniform": False}, {"method": "magnitude"},
                                     {"method": "par"}])
def test_llama_shared_statistics_give_the_per_layer_result(options):
    model, batch = hf.llama()
    data = [batch, {"input_ids": torch.randint(0, 512, (2, 16))}]
    config = SparseConfig(**options)
    shared, shared_results = sparsify(model, config, data, True)
    alone, alone_results = sparsify(model, config, data, False)
    for (name, a), b in zip(shared.state_dict().items(), alone.state_dict().values()):
        assert torch.equal(a, b), name
    assert [(r.name, r.sparsity, r.relative_error) for r in shared_results] == \
        [(r.name, r.sparsity, r.relative_error) for r in alone_results]


def test_projections_of_one_input_share_one_statistics_object():
    model, batch = hf.llama()
    sparsifier = Sparsifier(model, SparseConfig(method="hessian"), [batch])
    names = list(sparsifier.layers)
    stats = sparsifier._collect(names, lambda _stopper: run_dataset(model, [batch]), {"hessian"})
    prefix = "model.layers.0."
    q, k, v, o = (stats[prefix + f"self_attn.{p}_proj"] for p in "qkvo")
    gate, up, down = (stats[prefix + f"mlp.{p}_proj"] for p in ("gate", "up", "down"))
    assert q is k is v and gate is up
    assert len({id(s) for s in (q, o, gate, down)}) == 4
    assert len({id(s) for s in stats.values()}) == 4 * len(model.model.layers)


class SometimesShared(nn.Module):
    """``b`` reads ``a``'s input only when the batch sums to a positive number."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        return self.a(x) + self.b(x if float(x.sum()) > 0 else x.clone())


class ReadTwice(nn.Module):
    """``b`` shares ``a``'s input, and ``b`` is called twice on it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        return self.a(x) + self.b(x) + self.b(x)


@pytest.mark.parametrize("method", ["hessian", "magnitude"])
@pytest.mark.parametrize("model_class", [SometimesShared, ReadTwice])
def test_inconsistent_sharing_falls_back_to_per_layer_statistics(method, model_class):
    torch.manual_seed(0)
    model = model_class()
    data = [torch.randn(8, 16).abs(), -torch.randn(8, 16).abs(), torch.randn(8, 16).abs()]
    shared, _ = sparsify(model, SparseConfig(method=method), data, True)
    alone, _ = sparsify(model, SparseConfig(method=method), data, False)
    for name in ("a", "b"):
        assert torch.equal(getattr(shared, name).weight, getattr(alone, name).weight), name
    # and the per-layer statistics really are per layer: b's Hessian counts its two calls
    sparsifier = Sparsifier(model, SparseConfig(method=method), data)
    stats = sparsifier._collect(["a", "b"], lambda _stopper: run_dataset(model, data), {"hessian"})
    assert stats["a"] is not stats["b"]


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.integers(1, 24), min_size=1, max_size=4), columns=st.integers(4, 40),
       sparsities=st.lists(st.sampled_from([0.0, 0.3, 0.5, 0.75]), min_size=4, max_size=4),
       pattern=st.sampled_from([None, (2, 4), (1, 4)]), blocksize=st.sampled_from([4, 16, 128]),
       seed=st.integers(0, 2**16))
def test_stacked_sparsegpt_equals_one_layer_at_a_time(rows, columns, sparsities, pattern, blocksize, seed):
    generator = torch.Generator().manual_seed(seed)
    stats = LayerStats("x", columns, "cpu", hessian=True)
    stats.add(torch.randn(3 * columns, columns, generator=generator))
    weights = [torch.randn(r, columns, generator=generator) for r in rows]
    options = {"blocksize": blocksize}
    stacked = sparsegpt.prune_group(weights, stats, sparsities[:len(rows)], pattern, options)
    for weight, sparsity, (new, mask) in zip(weights, sparsities, stacked):
        alone = LayerStats("x", columns, "cpu", hessian=True)
        alone.hessian = stats.hessian
        expected_new, expected_mask = sparsegpt.prune(weight, alone, sparsity, pattern, options)
        assert torch.equal(mask, expected_mask)
        assert torch.equal(new, expected_new)


@settings(max_examples=30, deadline=None)
@given(batches=st.lists(st.integers(1, 30), min_size=1, max_size=4), columns=st.integers(1, 70),
       seed=st.integers(0, 2**16))
def test_the_hessian_accumulated_on_the_upper_blocks_is_the_whole_gram_matrix(batches, columns, seed):
    """Only the column blocks on and above the diagonal of X^T X are accumulated; read back, the matrix is the
    symmetric X^T X of every row added, whatever the column count (fewer columns than blocks included)."""
    generator = torch.Generator().manual_seed(seed)
    stats = LayerStats("x", columns, "cpu", hessian=True)
    rows = [torch.randn(count, columns, generator=generator, dtype=torch.float64).float() for count in batches]
    for batch in rows:
        stats.add(batch)
    expected = sum(batch.double().T @ batch.double() for batch in rows)
    hessian = stats.symmetric_hessian()
    assert torch.equal(hessian, hessian.T)
    torch.testing.assert_close(hessian.double(), expected, rtol=1e-5, atol=1e-4)
