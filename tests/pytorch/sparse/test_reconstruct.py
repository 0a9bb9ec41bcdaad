"""Least-squares reconstruction of the kept weights (``SparseConfig.reconstruct``): the same masks, a lower layer
error, the exact least-squares optimum when run to convergence, dead inputs left alone, and the default per method."""
import pytest
from hypothesis import given, settings, strategies as st
import torch
from torch import nn

from msmodelslim.pytorch.sparse.sparse_tools import Compressor, SparseConfig
from msmodelslim.pytorch.sparse.sparse_tools.methods import sparsegpt
from msmodelslim.pytorch.sparse.sparse_tools.methods.reconstruct import damped_hessian, reconstruct
from msmodelslim.pytorch.sparse.sparse_tools.stats import LayerStats

from test_sparse_tools import correlated_inputs


def _sparsified(method, inputs, reconstruct_, pattern="unstructured"):
    torch.manual_seed(0)
    layer = nn.Linear(inputs.shape[1], 48)
    original = layer.weight.detach().clone()
    config = SparseConfig(method=method, pattern=pattern, reconstruct=reconstruct_)
    Compressor(nn.Sequential(layer), config).compress([inputs[:512], inputs[512:]])
    return original, layer.weight.detach().clone()


def _error(original, new, inputs):
    return ((inputs @ (original - new).T).norm() / (inputs @ original.T).norm()).item()


@pytest.mark.parametrize("method", ["weight_magnitude", "magnitude", "hessian", "par_v2"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_reconstruction_keeps_the_mask_and_lowers_the_layer_error(method, pattern):
    inputs = correlated_inputs(64, rows=1024)
    original, plain = _sparsified(method, inputs, False, pattern)
    _, rebuilt = _sparsified(method, inputs, True, pattern)
    assert torch.equal(plain == 0, rebuilt == 0)
    assert _error(original, rebuilt, inputs) < 0.9 * _error(original, plain, inputs)


def test_hessian_reconstructs_by_default_and_plain_sparsegpt_is_one_flag_away():
    inputs = correlated_inputs(64, rows=1024)
    original, default = _sparsified("hessian", inputs, None)
    _, plain = _sparsified("sparsegpt", inputs, False)
    stats = LayerStats("layer", 64, "cpu", hessian=True)
    stats.add(inputs[:512])
    stats.add(inputs[512:])
    expected, _ = sparsegpt.prune(original, stats, 0.5)
    assert torch.equal(plain, expected)  # reconstruct=False: SparseGPT exactly, as the original
    assert not torch.equal(default, plain) and torch.equal(default == 0, plain == 0)
    _, wanda = _sparsified("magnitude", inputs, None)
    assert torch.equal(wanda, original.masked_fill(wanda == 0, 0))  # other methods: no update unless asked


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), columns=st.integers(2, 24), sparsity=st.floats(0.1, 0.9), seed=st.integers(0, 10**6))
def test_run_to_convergence_it_is_the_per_row_least_squares_optimum(rows, columns, sparsity, seed):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(4 * columns, columns, generator=generator, dtype=torch.float64) @ torch.randn(
        columns, columns, generator=generator, dtype=torch.float64)
    dense = torch.randn(rows, columns, generator=generator, dtype=torch.float64)
    mask = torch.rand(rows, columns, generator=generator) < sparsity
    hessian = inputs.T @ inputs + 0.01 * torch.eye(columns, dtype=torch.float64)
    live = torch.ones(columns, dtype=torch.bool)
    solved = reconstruct(dense, dense.masked_fill(mask, 0), mask, hessian, live, steps=3 * columns)
    for row in range(rows):
        keep = ~mask[row]
        expected = torch.zeros(columns, dtype=torch.float64)
        if keep.any():  # minimise (w - w0) H (w - w0)^T over the kept entries: H_kk w_k = (H w0)_k
            expected[keep] = torch.linalg.solve(hessian[keep][:, keep], (hessian @ dense[row])[keep])
        torch.testing.assert_close(solved[row], expected, rtol=1e-6, atol=1e-6 * float(dense.abs().max()))
    assert torch.equal(solved[mask], torch.zeros(int(mask.sum()), dtype=torch.float64))


def test_a_column_whose_input_is_always_zero_is_left_as_the_method_left_it():
    inputs = correlated_inputs(64, rows=1024)
    inputs[:, 5] = 0
    stats = LayerStats("layer", 64, "cpu", hessian=True)
    stats.add(inputs)
    hessian, live = damped_hessian(stats, 0.01)
    assert not live[5] and live.sum() == 63
    generator = torch.Generator().manual_seed(1)
    dense = torch.randn(8, 64, generator=generator)
    mask = torch.rand(8, 64, generator=generator) < 0.5
    pruned = dense.masked_fill(mask, 0)
    solved = reconstruct(dense, pruned, mask, hessian, live)
    assert torch.equal(solved[:, 5], pruned[:, 5])
    assert torch.isfinite(solved).all()


def test_a_layer_already_exact_stays_put():
    """Nothing pruned, or inputs that never vary: every step size is 0 / 0, and no NaN comes out."""
    stats = LayerStats("layer", 16, "cpu", hessian=True)
    stats.add(torch.zeros(32, 16))
    hessian, live = damped_hessian(stats, 0.01)
    dense = torch.randn(4, 16)
    nothing = torch.zeros(4, 16, dtype=torch.bool)
    assert torch.equal(reconstruct(dense, dense.clone(), nothing, hessian, live), dense)


@pytest.mark.parametrize("value", ["yes", 1, 0.5])
def test_reconstruct_must_be_a_bool_or_none(value):
    with pytest.raises(TypeError, match=r"reconstruct must be True, False or None.*" + repr(value).replace(".", r"\.")):
        SparseConfig(method="hessian", reconstruct=value)


def test_reconstructs_resolves_the_default_per_method():
    assert SparseConfig(method="hessian").reconstructs and SparseConfig(method="sparsegpt").reconstructs
    assert not SparseConfig(method="magnitude").reconstructs and not SparseConfig(method="par").reconstructs
    assert SparseConfig(method="wanda", reconstruct=True).reconstructs
    assert not SparseConfig(method="hessian", reconstruct=False).reconstructs


def test_the_cli_flag_reaches_the_config():
    from msmodelslim.cli.main import build_parser

    parser = build_parser()
    base = ["sparse", "model", "--out", "out"]
    assert parser.parse_args(base).reconstruct is None
    assert parser.parse_args(base + ["--no-reconstruct"]).reconstruct is False
    assert parser.parse_args(base + ["--method", "wanda", "--reconstruct"]).reconstruct is True
