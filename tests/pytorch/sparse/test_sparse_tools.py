"""SparseConfig / Compressor: the documented calls, exact sparsity, the algorithms against their math, bad input."""
import logging

import pytest
from hypothesis import given, settings, strategies as st
import torch
from torch import nn

from msmodelslim.pytorch.sparse.sparse_tools import Compressor, SparseConfig
from msmodelslim.pytorch.sparse.sparse_tools.methods import dsnot
from msmodelslim.pytorch.sparse.sparse_tools.stats import LayerStats


def test_seed_simple_model_verbatim():
    import torch
    from msmodelslim.pytorch.sparse.sparse_tools import SparseConfig, Compressor

    # 定义一个简单的模型
    class SimpleModel(torch.nn.Module):
        def __init__(self):
            super(SimpleModel, self).__init__()
            self.linear1 = torch.nn.Linear(100, 50)
            self.linear2 = torch.nn.Linear(50, 10)

        def forward(self, x):
            x = self.linear1(x)
            x = self.linear2(x)
            return x

    generate_model = SimpleModel()
    test_dataset = [torch.randn(64, 100)]
    sparse_config = SparseConfig(method="magnitude", sparse_ratio=0.5)
    prune_compressor = Compressor(generate_model, sparse_config)
    prune_compressor.compress(dataset=test_dataset)

    assert prune_compressor.is_compressed and prune_compressor.compressed_model is generate_model
    assert (generate_model.linear1.weight == 0).sum(1).tolist() == [50] * 50
    assert (generate_model.linear2.weight == 0).sum(1).tolist() == [25] * 10


def test_seed_example_verbatim_without_torch_npu():
    import torch
    from msmodelslim.pytorch.sparse.sparse_tools import SparseConfig, Compressor

    class TwoLayerNet(torch.nn.Module):
        def __init__(self, D_in, H, D_out):
            super(TwoLayerNet, self).__init__()
            self.linear1 = torch.nn.Linear(D_in, H, bias=True)
            self.linear2 = torch.nn.Linear(H, D_out, bias=True)

        def forward(self, x):
            x = self.linear1(x)
            y_pred = self.linear2(x)
            return y_pred

    D_in, H, D_out = 100, 10, 1
    model = TwoLayerNet(100, 10, 1)
    test_dataset = [torch.randn(64, 100)]
    sparse_config = SparseConfig(method='magnitude')
    prune_compressor = Compressor(model, sparse_config)
    prune_compressor.compress(dataset=test_dataset)
    assert (model.linear1.weight == 0).sum(1).tolist() == [50] * 10
    assert (model.linear2.weight == 0).sum().item() == 5


def test_sparse_config_validation_and_repr():
    assert repr(SparseConfig()) == ("SparseConfig(mode='sparse', method='magnitude', sparse_ratio=0.5, "
                                    "progressive=False, uniform=True)")
    with pytest.raises(ValueError, match="mode should be 'sparse'"):
        SparseConfig(mode="dense")
    with pytest.raises(ValueError, match="optimizer should be in"):
        SparseConfig(method="random")
    with pytest.raises(TypeError, match="sparse_ratio is invalid, please check it."):
        SparseConfig(sparse_ratio=1)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="sparse_ratio should be between 0 and 1"):
            SparseConfig(sparse_ratio=bad)
    with pytest.raises(TypeError, match="progressive is invalid, please check it."):
        SparseConfig(progressive=1)
    with pytest.raises(TypeError, match="uniform is invalid, please check it."):
        SparseConfig(uniform="no")
    with pytest.raises(ValueError, match="pattern must be"):
        SparseConfig(pattern="4:2")
    with pytest.raises(ValueError, match="needs pattern='unstructured'"):
        SparseConfig(pattern="2:4", uniform=False)
    with pytest.raises(TypeError, match="ignore must be a list"):
        SparseConfig(ignore="lm_head")
    assert SparseConfig(method="sparsegpt").algorithm == "hessian"
    assert SparseConfig(method="wanda").algorithm == "magnitude"
    assert SparseConfig(method="dsnot").algorithm == "par_v2"
    assert SparseConfig(pattern="4:8").n_m == (4, 8)


def test_compressor_type_checks():
    with pytest.raises(TypeError, match="model must be Module, not str."):
        Compressor("model", SparseConfig())
    with pytest.raises(TypeError, match="cfg must be SparseConfig, not str."):
        Compressor(nn.Linear(4, 4), "cfg")
    compressor = Compressor(nn.Linear(4, 4), SparseConfig())
    assert compressor.compressed_model is None and not compressor.is_compressed and compressor.model_wrapper is None


class Net(nn.Module):
    def __init__(self, widths=(64, 96, 48, 16)):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.lm_head = nn.Linear(widths[-1], 8)

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.lm_head(x)


def correlated_inputs(columns, rows=1024, seed=0):
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, 16, generator=generator)
    mix = torch.randn(16, columns, generator=generator)
    scales = torch.logspace(-1, 1, columns)
    return (base @ mix) * scales + 0.3 * torch.randn(rows, columns, generator=generator) + 0.2


@pytest.mark.parametrize("method", ["weight_magnitude", "magnitude", "par", "par_v2"])
@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.7])
def test_exact_per_row_counts(method, ratio):
    torch.manual_seed(0)
    model = Net()
    Compressor(model, SparseConfig(method=method, sparse_ratio=ratio)).compress([correlated_inputs(64)])
    for layer in model.layers:
        zeros = (layer.weight == 0).sum(1)
        assert zeros.tolist() == [int(layer.in_features * ratio)] * layer.out_features
    assert (model.lm_head.weight == 0).sum() == 0  # lm_head is never sparsified


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
@pytest.mark.parametrize("method", ["weight_magnitude", "magnitude", "hessian", "par", "par_v2"])
def test_n_m_in_every_group(method, pattern):
    n, m = (int(v) for v in pattern.split(":"))
    torch.manual_seed(0)
    model = Net()
    Compressor(model, SparseConfig(method=method, pattern=pattern)).compress([correlated_inputs(64)])
    for layer in model.layers:
        groups = (layer.weight == 0).reshape(layer.out_features, -1, m).sum(2)
        assert (groups == n).all()


def test_hessian_per_128_column_block():
    torch.manual_seed(0)
    layer = nn.Linear(300, 40)
    Compressor(nn.Sequential(layer), SparseConfig(method="hessian", sparse_ratio=0.4)).compress(
        [correlated_inputs(300)])
    zeros = layer.weight == 0
    for start in range(0, 300, 128):
        block = zeros[:, start:start + 128]
        assert block.sum().item() == int(block.numel() * 0.4)


def _reconstruction_error(weight, new, inputs):
    return ((inputs @ (weight - new).T).norm() / (inputs @ weight.T).norm()).item()


def test_algorithms_against_the_math():
    """Same budget: SparseGPT < Wanda < plain |W| in ||WX - W'X||; prune-and-regrow lowers the mean shift."""
    torch.manual_seed(0)
    original = nn.Linear(128, 96)
    inputs = correlated_inputs(128, rows=2048)
    errors, shifts = {}, {}
    for method in ("weight_magnitude", "magnitude", "hessian", "par", "par_v2"):
        layer = nn.Linear(128, 96)
        layer.load_state_dict(original.state_dict())
        Compressor(nn.Sequential(layer), SparseConfig(method=method)).compress([inputs[:1024], inputs[1024:]])
        errors[method] = _reconstruction_error(original.weight.detach(), layer.weight.detach(), inputs)
        mask = layer.weight == 0
        shifts[method] = dsnot.mean_shift(original.weight.detach(), mask, inputs.mean(0)).abs().mean().item()
        assert (mask.sum(1) == 64).all() or method == "hessian"
    assert errors["hessian"] < errors["magnitude"] < errors["weight_magnitude"]
    assert shifts["par"] < shifts["magnitude"] and shifts["par_v2"] < shifts["magnitude"]


def test_par_refinement_lowers_the_objective_from_its_wanda_start():
    torch.manual_seed(0)
    weight = torch.randn(64, 96)
    stats = LayerStats("layer", 96, "cpu", moments=True)
    stats.add(correlated_inputs(96))
    from msmodelslim.pytorch.sparse.sparse_tools.methods import wanda
    from msmodelslim.pytorch.sparse.sparse_tools.methods.masks import score_mask

    start = score_mask(wanda.scores(weight, stats), 0.5)
    for max_swaps, threshold in ((None, 0.0), (50, 0.1), (3, 0.0)):
        refined = dsnot.refine(weight, start, stats, max_swaps, threshold)
        before = dsnot.mean_shift(weight, start, stats.input_mean).abs()
        after = dsnot.mean_shift(weight, refined, stats.input_mean).abs()
        assert (after <= before + 1e-6).all() and after.mean() < before.mean()
        assert refined.sum(1).tolist() == start.sum(1).tolist()
        if max_swaps == 3:
            assert ((refined != start).sum(1) <= 6).all()  # each swap changes two positions


def test_all_calibration_batches_are_used():
    torch.manual_seed(0)
    first, second = correlated_inputs(64, seed=1), correlated_inputs(64, seed=2) * torch.linspace(3, 0.1, 64)
    masks = []
    for dataset in ([first], [first, second]):
        layer = nn.Linear(64, 32)
        torch.manual_seed(0)
        layer.reset_parameters()
        Compressor(nn.Sequential(layer), SparseConfig()).compress(dataset)
        masks.append(layer.weight == 0)
    assert not torch.equal(masks[0], masks[1])
    stats = LayerStats("x", 64, "cpu")
    stats.add(first)
    stats.add(second)
    assert torch.allclose(stats.input_sq_sum, first.square().sum(0) + second.square().sum(0))


def test_deterministic_with_ties():
    layer = nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight.copy_(torch.randint(-3, 4, (32, 64)).float())  # many equal magnitudes
    masks = []
    for _ in range(2):
        copy = nn.Linear(64, 32)
        copy.load_state_dict(layer.state_dict())
        Compressor(nn.Sequential(copy), SparseConfig(method="weight_magnitude")).compress([torch.randn(8, 64)])
        masks.append(copy.weight == 0)
    assert torch.equal(masks[0], masks[1])


def test_non_uniform_owl_keeps_the_overall_ratio():
    from zoo import hf

    model, batch = hf.llama()
    compressor = Compressor(model, SparseConfig(uniform=False, owl_lambda=0.2))
    compressor.compress([batch, batch])
    report = compressor.report()
    assert len({round(layer.target, 4) for layer in report.layers}) > 1
    assert abs(report.overall_sparsity - 0.5) <= 0.005


def test_progressive_stage_order_and_other_layers(caplog):
    from zoo import hf

    model, batch = hf.bert()
    log = logging.getLogger("msmodelslim")
    log.addHandler(caplog.handler)
    try:
        compressor = Compressor(model, SparseConfig(progressive=True))
        compressor.compress([batch])
    finally:
        log.removeHandler(caplog.handler)
    order = [(layer.stage, layer.name) for layer in compressor.report().layers]
    stages_seen = [stage for stage, _ in order]
    assert stages_seen == sorted(stages_seen, key=["mlp", "attention output", "q/k/v", "other"].index)
    assert ("other", "bert.pooler.dense") in order and ("other", "classifier") in order
    assert "fit no stage and are sparsified last" in caplog.text
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            assert abs((module.weight == 0).float().mean().item() - 0.5) < 0.02, name


def test_ignore_patterns():
    model = Net()
    Compressor(model, SparseConfig(ignore=["layers.0", "re:layers\\.[2]$"])).compress([torch.randn(8, 64)])
    assert (model.layers[0].weight == 0).sum() == 0 and (model.layers[2].weight == 0).sum() == 0
    assert (model.layers[1].weight == 0).float().mean() == 0.5


def test_small_layers_and_names_without_dots_do_not_crash():
    for method in ("magnitude", "hessian", "par", "par_v2", "weight_magnitude"):
        fc = nn.Linear(3, 2)
        model = nn.Sequential()
        model.add_module("fc", fc)
        Compressor(model, SparseConfig(method=method)).compress([torch.randn(4, 3), torch.randn(5, 3)])
        # floor(3 * 0.5) per row; SparseGPT counts per 128-column block: floor(6 * 0.5)
        assert (fc.weight == 0).sum().item() == (3 if method == "hessian" else 2)


# ------------------------------------------------------------------------------------------------ bad input
def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, saved):
    return all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_empty_and_wrong_datasets():
    model = Net()
    saved = _snapshot(model)
    compressor = Compressor(model, SparseConfig())
    with pytest.raises(ValueError, match="dataset is empty"):
        compressor.compress([])
    with pytest.raises(TypeError, match="dataset must be list, not tuple."):
        compressor.compress((torch.randn(2, 64),))
    with pytest.raises(TypeError, match=r"dataset\[1\] must be a Tensor, list, tuple, dict"):
        compressor.compress([torch.randn(2, 64), "text"])
    assert _unchanged(model, saved) and not compressor.is_compressed


class Block(nn.Module):
    def __init__(self, explode=False):
        super().__init__()
        self.linear = nn.Linear(32, 32)
        self.explode = explode

    def forward(self, x):
        x = torch.relu(self.linear(x))
        if self.explode and x.abs().max() > 1e5:
            x = x * float("inf")  # an overflow on extreme inputs
        return x


class Exploding(nn.Module):
    """Three blocks; the second one overflows to inf on the second (huge) calibration batch."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block(explode=True), Block()])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


@pytest.mark.parametrize("method", ["magnitude", "hessian"])
def test_nan_activation_names_the_layer_and_restores_every_weight(method):
    torch.manual_seed(0)
    model = Exploding()
    saved = _snapshot(model)
    with pytest.raises(ValueError, match=r"layer 'blocks\.2\.linear'.*NaN or inf"):
        Compressor(model, SparseConfig(method=method)).compress([torch.randn(4, 32), torch.randn(4, 32) * 1e6])
    assert _unchanged(model, saved)  # blocks 0 and 1 had been sparsified already


def test_forward_error_names_the_batch_and_restores():
    from zoo import hf

    model, batch = hf.llama()
    saved = _snapshot(model)
    too_wide = {"inputs_embeds": torch.randn(2, 16, 96)}  # fails inside the first block
    out_of_vocabulary = {"input_ids": torch.full((2, 16), 10_000)}  # fails before it
    for bad in (too_wide, out_of_vocabulary):
        with pytest.raises(RuntimeError, match=r"dataset\[1\]"):
            Compressor(model, SparseConfig()).compress([batch, bad])
        assert _unchanged(model, saved)


def test_models_with_code_between_blocks_use_whole_passes():
    class Between(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(3))

        def forward(self, x):
            for block in self.blocks:
                x = torch.tanh(block(x)) * 2  # work between blocks that a block-by-block run would skip
            return x

    torch.manual_seed(0)
    model = Between()
    copy_model = Between()
    copy_model.load_state_dict(model.state_dict())
    x = torch.randn(32, 16)
    Compressor(model, SparseConfig()).compress([x])
    # the last layer's statistics must come from its real inputs: tanh(...) * 2 of the sparse earlier layers
    stats = LayerStats("blocks.2", 16, "cpu")
    with torch.no_grad():
        h = torch.tanh(model.blocks[0](x)) * 2
        h = torch.tanh(model.blocks[1](h)) * 2
    stats.add(h)
    from msmodelslim.pytorch.sparse.sparse_tools.methods import wanda
    from msmodelslim.pytorch.sparse.sparse_tools.methods.masks import score_mask

    expected = score_mask(wanda.scores(copy_model.blocks[2].weight.detach(), stats), 0.5)
    assert torch.equal(model.blocks[2].weight == 0, expected)


def test_model_without_linear_layers(caplog):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    saved = _snapshot(model)
    log = logging.getLogger("msmodelslim")
    log.addHandler(caplog.handler)
    try:
        Compressor(model, SparseConfig()).compress([torch.randn(1, 3, 8, 8)])
    finally:
        log.removeHandler(caplog.handler)
    assert "no Linear layer" in caplog.text and _unchanged(model, saved)


def test_report():
    model = Net()
    compressor = Compressor(model, SparseConfig(method="hessian"))
    compressor.compress([correlated_inputs(64)])
    report = compressor.report()
    assert [layer.name for layer in report.layers] == ["layers.0", "layers.1", "layers.2"]
    assert all(0 < layer.relative_error < 1 for layer in report.layers)
    assert report.overall_sparsity == pytest.approx(0.5, abs=0.01)
    assert "relative error" in str(report) and "layers.1" in str(report)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 12), groups=st.integers(1, 6), m=st.integers(2, 8), data=st.data())
def test_n_m_ranking_by_comparison_equals_the_stable_sort(rows, groups, m, data):
    """Ties (many, and -0.0 against 0.0) go to the lower column index either way."""
    from msmodelslim.pytorch.sparse.sparse_tools.methods import masks

    n = data.draw(st.integers(1, m - 1))
    values = data.draw(st.lists(st.sampled_from([-2.0, -0.0, 0.0, 1.0, 1.5]), min_size=rows * groups * m,
                                max_size=rows * groups * m))
    scores = torch.tensor(values).reshape(rows, groups * m)
    by_comparison = masks.lowest_n_of_m(scores, n, m)
    sorted_groups = scores.reshape(rows, groups, m)
    order = torch.argsort(sorted_groups, dim=-1, stable=True)
    expected = torch.zeros_like(sorted_groups, dtype=torch.bool).scatter_(-1, order[..., :n], True)
    assert torch.equal(by_comparison, expected.reshape(rows, groups * m))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 10), columns=st.integers(1, 24), data=st.data())
def test_per_row_selection_equals_the_stable_sort(rows, columns, data):
    from msmodelslim.pytorch.sparse.sparse_tools.methods import masks

    count = data.draw(st.integers(0, columns))
    values = data.draw(st.lists(st.sampled_from([-2.0, -0.0, 0.0, 1.0, 1.5]), min_size=rows * columns,
                                max_size=rows * columns))
    scores = torch.tensor(values).reshape(rows, columns)
    order = torch.argsort(scores, dim=1, stable=True)
    expected = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order[:, :count], True)
    assert torch.equal(masks.lowest_per_row(scores, count), expected)


def test_owl_prunes_the_block_with_planted_outliers_less():
    """OWL keeps more weights where the outliers are: a block whose weights carry planted outliers (a few input
    columns scaled 30x) gets a ratio below the overall target, the others above it."""
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2)
    model = T.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for module in model.model.layers[1].modules():
            if isinstance(module, torch.nn.Linear):
                module.weight[:, :3] *= 30
    batch = {"input_ids": torch.randint(0, 256, (2, 16))}
    compressor = Compressor(model, SparseConfig(uniform=False))
    compressor.compress([batch])
    targets = {layer.name: layer.target for layer in compressor.report().layers}
    planted = [t for name, t in targets.items() if name.startswith("model.layers.1.")]
    others = [t for name, t in targets.items() if not name.startswith("model.layers.1.")]
    assert planted and max(planted) < 0.5 < min(others), targets
    assert abs(compressor.report().overall_sparsity - 0.5) <= 0.015  # small rows: each rounds its count down
