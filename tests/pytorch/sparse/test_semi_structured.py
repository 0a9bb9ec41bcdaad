"""2:4 models on semi-structured sparse kernels: where they cannot run (here, on CPU) nothing changes and every
layer is listed with the reason; the CUDA conversion itself is tested in tests/test_cuda.py."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from msmodelslim.pytorch.sparse.sparse_tools import Compressor, SparseConfig, to_semi_structured
from msmodelslim.pytorch.sparse.sparse_tools.semi_structured import is_two_four
from zoo import hf


def test_on_cpu_every_layer_stays_dense_with_the_reason():
    model, batch = hf.llama()
    Compressor(model, SparseConfig(method="magnitude", pattern="2:4")).compress([batch])
    before = {name: value.clone() for name, value in model.state_dict().items()}
    report = to_semi_structured(model)
    assert report.converted == []
    linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    assert sorted(report.skipped) == sorted(linears)
    assert all("CUDA device is needed" in reason for reason in report.skipped.values())
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


def test_bad_arguments_name_the_argument():
    model, _ = hf.llama()
    with pytest.raises(ValueError, match="backend must be one of"):
        to_semi_structured(model, backend="cusparse")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        to_semi_structured("model")


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 6), groups=st.integers(1, 6), seed=st.integers(0, 2**16), extra_nonzero=st.booleans())
def test_two_four_check_agrees_with_a_group_by_group_count(rows, groups, seed, extra_nonzero):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, groups * 4, generator=generator)
    keep = torch.rand(rows, groups, 4, generator=generator).argsort(-1)[..., :2]
    weight = weight.reshape(rows, groups, 4).scatter(-1, keep, 0.0).reshape(rows, -1)
    if extra_nonzero:  # one group gets a third non-zero weight
        r, g = seed % rows, seed % groups
        zeros = (weight[r, 4 * g:4 * g + 4] == 0).nonzero().flatten()
        weight[r, 4 * g + zeros[0]] = 1.0
    expected = all(int((weight[r, 4 * g:4 * g + 4] == 0).sum()) >= 2 for r in range(rows) for g in range(groups))
    assert is_two_four(weight) == expected == (not extra_nonzero)
    assert not is_two_four(torch.zeros(2, 6))  # width not a multiple of 4
