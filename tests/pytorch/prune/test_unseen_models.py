"""PruneTorch on models its rules were not written for: per-head tables in attention, split-then-concat blocks, an
unknown per-channel layer in the residual stream, grouped convolutions, a forward() that hard-codes a width. Each
is pruned (or the part that cannot be is protected and named) and keeps running; and the MACs / latency budgets."""
import copy
import logging

import pytest
import torch
from torch import nn
import transformers as T

from msmodelslim.pytorch.prune import desc as desc_format
from msmodelslim.pytorch.prune.measure import profile
from msmodelslim.pytorch.prune.prune_torch import PruneTorch
from msmodelslim.pytorch.utils.calibration import CallParams, as_call_params
from zoo import cnn, graph_fuzz, hf, unseen


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _pruned_and_replayed(build, ratio=0.5, **kwargs):
    torch.manual_seed(0)
    model, x = build()
    fresh = copy.deepcopy(model)
    shape = model(x).shape
    before = _params(model)
    desc = PruneTorch(model, x).prune(ratio, **kwargs)
    with torch.no_grad():
        out = model(x)
    assert out.shape == shape
    PruneTorch(fresh, x).prune_by_desc(desc)
    torch.testing.assert_close(fresh(x), out)
    return model, x, _params(model) / before


def test_attention_with_per_head_tables_is_protected_and_named_never_an_index_error(caplog):
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        model, _, kept = _pruned_and_replayed(unseen.relpos)
    assert abs(kept - 0.5) <= 0.02
    # protected for its per-head gate, or for the reshape into heads that its channels go through
    assert "Protected from pruning: blocks.0.attn." in caplog.text
    assert "cannot be pruned consistently" in caplog.text or "cuts the channels into heads" in caplog.text
    attention = model.blocks[0].attn
    assert attention.q.out_features == attention.rel_bias.shape[0] * attention.head_dim  # heads intact


@pytest.mark.parametrize("name", ["split_concat", "unknown_in_residual"])
def test_unforeseen_blocks_are_pruned_to_the_budget(name):
    _, _, kept = _pruned_and_replayed(unseen.ALL[name])
    assert kept < 0.6


def test_a_layer_that_runs_but_feeds_no_output_is_pruned_with_its_stream():
    model, _, kept = _pruned_and_replayed(unseen.dead_end_branch)
    assert kept < 0.6
    assert model.pool_norm.normalized_shape == (model.embed.out_features,) and model.embed.out_features < 64


def test_the_planned_parameter_count_is_the_pruned_one():
    """The planner counts what the pruning removes. Generated model 860 flattens a grouped convolution's map into a
    residual stream of features; the graph lists each of its channels once per flattened position, which once made
    the plan count sixteen channels for one (kept 57.8 % for a budget of 50 %)."""
    case = graph_fuzz.build(860)
    desc = PruneTorch(case.model, case.inputs, align=case.align).prune(case.ratio, case.un_prune_list())
    assert _params(case.model) == desc["__meta__"]["parameters"]["after"]


def test_the_default_protection_keeps_a_cnn_stem_but_freezes_no_transformer_group(caplog):
    """The original's default ``[0, -1]`` protects the first layer; in a transformer that layer is the first query
    projection (heads are kept uniform across layers, so all heads would stay) or a ViT's patch embedding (the
    whole residual stream would stay). An explicit ``[0, -1]`` keeps the original behaviour."""
    torch.manual_seed(0)
    model, inputs = hf.llama()
    explicit = copy.deepcopy(model)
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        PruneTorch(model, CallParams(**inputs)).prune(0.6)
    assert "the default un_prune_list does not protect it" in caplog.text
    attention = model.model.layers[1].self_attn
    assert attention.q_proj.out_features < 128 and model.config.hidden_size < 128
    PruneTorch(explicit, CallParams(**inputs)).prune(0.6, un_prune_list=[0, -1])
    assert all(layer.self_attn.q_proj.out_features == 128 for layer in explicit.model.layers)

    cnn_model, x = cnn.resnet18(10).eval(), torch.randn(1, 3, 32, 32)
    PruneTorch(cnn_model, x).prune(0.6)
    assert cnn_model.conv1.out_channels == 64  # the stem (and so the first stage's stream) stays, as the original


def test_a_cross_attention_joins_the_residual_stream_from_the_dependency_graph(caplog):
    """BART's decoder layers hold a cross-attention the family rules do not name; the dependency graph confirms
    where the stream goes, so the hidden size shrinks instead of being protected."""
    torch.manual_seed(0)
    cfg = T.BartConfig(vocab_size=256, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                       max_position_embeddings=32)
    model = T.BartForConditionalGeneration(cfg).eval()
    inputs = {"input_ids": torch.randint(3, 256, (2, 8)), "decoder_input_ids": torch.randint(3, 256, (2, 8))}
    fresh = copy.deepcopy(model)
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        desc = PruneTorch(model, CallParams(**inputs)).prune(0.6)
    assert "encoder_attn" in caplog.text and "The residual stream also reaches" in caplog.text
    assert model.model.decoder.layers[0].encoder_attn.k_proj.in_features < 64
    assert abs(_params(model) / _params(fresh) - 0.6) <= 0.02
    # the cross-attention keeps its heads while the self-attention's are pruned: no one head count describes both,
    # so the config stays as it was, and the log says so
    assert model.config.d_model == 64 and "a model rebuilt from it would differ" in caplog.text
    PruneTorch(fresh, CallParams(**inputs)).prune_by_desc(desc)
    torch.testing.assert_close(fresh(**inputs).logits, model(**inputs).logits)


def test_grouped_convolutions_lose_whole_groups():
    model, _, kept = _pruned_and_replayed(unseen.resnext)
    assert kept < 0.6
    conv = model.blocks[0].grouped
    assert conv.groups < 4 and conv.out_channels == conv.groups * 16 and conv.in_channels == conv.groups * 16


def test_removing_one_conv_group_equals_silencing_it():
    """Removing group 1 of a ResNeXt block's grouped convolution gives the dense model with that group's
    channels cut at the expanding 1x1 convolution: any misaligned channel would change the output."""
    torch.manual_seed(0)
    model, x = unseen.resnext()
    pruner = PruneTorch(model, x)
    index = next(i for i, g in enumerate(pruner.groups) if g.name == "blocks.0.grouped (conv groups)")
    desc = desc_format.build_desc(model, pruner.groups, {index: [1]}, engine="torch-pruning")
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.blocks[0].expand.weight[:, 16:32] = 0
    pruner.prune_by_desc(desc)
    assert model.blocks[0].grouped.groups == 3
    torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-4)


def test_a_desc_cutting_a_conv_group_in_half_is_refused_and_the_model_unchanged():
    torch.manual_seed(0)
    model, x = unseen.resnext()
    pruner = PruneTorch(model, x)
    index = next(i for i, g in enumerate(pruner.groups) if g.name == "blocks.0.grouped (conv groups)")
    desc = desc_format.build_desc(model, pruner.groups, {index: [1]}, engine="torch-pruning")
    size, mask = desc["blocks.0.grouped"]["output"]
    mask = mask[:20] + desc_format.KEPT * 4 + mask[24:]  # keep 4 channels of group 1
    desc["blocks.0.grouped"]["output"] = [mask.count(desc_format.KEPT), mask]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="blocks.0.grouped"):
        pruner.prune_by_desc(desc)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _ConcatIntoGroupedConv(torch.nn.Module):
    """Three convolutions of 16, 48 and 32 channels concatenated into a grouped convolution of 2 groups of 48 input
    channels: its conv groups straddle the three producers' channel groups."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Conv2d(3, width, 3, padding=1) for width in (16, 48, 32))
        self.grouped = torch.nn.Conv2d(96, 24, 3, padding=1, groups=2)
        self.tail = torch.nn.Conv2d(24, 64, 1)
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
        x = torch.cat([self.a(x).relu(), self.b(x).relu(), self.c(x).relu()], 1)
        return self.head(self.tail(self.grouped(x).relu()).relu().mean((2, 3)))


def test_a_grouped_convolution_reading_a_concatenation_is_protected_before_planning(caplog):
    """Its conv groups cannot be removed whole from three producers: protected up front (named), not found by a
    broken trial run, and the budget is spent elsewhere."""
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        model, _, kept = _pruned_and_replayed(lambda: (_ConcatIntoGroupedConv().eval(), torch.randn(2, 3, 8, 8)),
                                              ratio=0.8)
    assert "grouped convolution grouped: its channels come from several channel groups" in caplog.text
    assert "breaks the model" not in caplog.text
    assert (model.grouped.in_channels, model.grouped.groups) == (96, 2) and model.tail.out_channels < 64
    assert kept < 0.95


class _AlignedConcatIntoGroupedConv(torch.nn.Module):
    """Convolutions of 16 and 32 channels concatenated into a grouped convolution of 3 groups of 16 input channels:
    each conv group lies in one producer, so conv groups 1 and 2 (both in ``b``) can go whole."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(3, 32, 3, padding=1)
        self.grouped = torch.nn.Conv2d(48, 48, 3, padding=1, groups=3)
        self.tail = torch.nn.Conv2d(48, 8, 1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = torch.cat([self.a(x).relu(), self.b(x).relu()], 1)
        return self.head(self.tail(self.grouped(x).relu()).relu().mean((2, 3)))


def test_a_grouped_convolution_reading_an_aligned_concatenation_loses_whole_conv_groups(caplog):
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        model, _, kept = _pruned_and_replayed(
            lambda: (_AlignedConcatIntoGroupedConv().eval(), torch.randn(2, 3, 8, 8)), ratio=0.67,
            un_prune_list=["head", "tail"])
    assert "grouped convolution" not in caplog.text and "breaks the model" not in caplog.text
    assert model.grouped.groups == 2 and model.grouped.in_channels == 32 and model.grouped.out_channels == 32
    assert model.a.out_channels == 16 and model.b.out_channels == 16  # a conv group of `b` went; `a` is whole
    assert abs(kept - 0.67) <= 0.02


class _TwoGroupedConvs(torch.nn.Module):
    """A grouped convolution of ``first`` groups feeding one of ``second`` groups, both 32 channels wide."""

    def __init__(self, first, second):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.first = torch.nn.Conv2d(32, 32, 3, padding=1, groups=first)
        self.second = torch.nn.Conv2d(32, 32, 3, padding=1, groups=second)
        self.tail = torch.nn.Conv2d(32, 8, 1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = self.second(self.first(self.stem(x).relu()).relu()).relu()
        return self.head(self.tail(x).relu().mean((2, 3)))


def test_grouped_convolutions_in_a_row_lose_the_coarser_ones_conv_groups(caplog):
    """4 groups of 8 channels into 2 groups of 16: first's groups 0-1 and 2-3 make second's groups 0 and 1, so the
    units are second's conv groups and one of them goes from both layers (and from the stem)."""
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        model, _, kept = _pruned_and_replayed(
            lambda: (_TwoGroupedConvs(4, 2).eval(), torch.randn(2, 3, 8, 8)), ratio=0.51,
            un_prune_list=["head", "tail"])
    assert "grouped convolution" not in caplog.text and "breaks the model" not in caplog.text
    assert (model.first.groups, model.second.groups, model.stem.out_channels) == (2, 1, 16)
    assert abs(kept - 0.51) <= 0.02


def test_grouped_convolutions_whose_groups_straddle_each_other_are_protected(caplog):
    """2 groups of 16 channels into 4 groups of 8: a conv group of the first spans two of the second."""
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        model, _, _ = _pruned_and_replayed(
            lambda: (_TwoGroupedConvs(2, 4).eval(), torch.randn(2, 3, 8, 8)), ratio=0.8, un_prune_list=["head"])
    assert "grouped convolution second: its channel groups do not map to whole convolution groups" in caplog.text
    assert (model.first.groups, model.second.groups) == (2, 4)


class _ConcatIntoCoarseningConvs(torch.nn.Module):
    """Two 16-channel convolutions concatenated into a grouped convolution of 4 groups, then one of 2: the units
    become the second's groups, each of them one whole part of the concatenation."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(3, 16, 3, padding=1)
        self.first = torch.nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.second = torch.nn.Conv2d(32, 32, 3, padding=1, groups=2)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = self.first(torch.cat([self.a(x).relu(), self.b(x).relu()], 1)).relu()
        return self.head(self.second(x).relu().mean((2, 3)))


def test_a_step_that_would_empty_a_part_is_not_offered_as_the_next_one(caplog):
    """Removing either unit would leave `a` or `b` without channels: the plan stops, and its INFO line says the
    parts allow no more instead of naming a step no walk may take."""
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        model, _, kept = _pruned_and_replayed(
            lambda: (_ConcatIntoCoarseningConvs().eval(), torch.randn(2, 3, 8, 8)), ratio=0.5, un_prune_list=["head"])
    line = next(line for line in caplog.text.splitlines() if "Pruning stopped early" in line)
    assert "parts of concatenations or splits" in line and "would keep" not in line
    assert kept == 1.0


class _ConcatThenChunk(torch.nn.Module):
    """Two layers concatenated, then cut in two equal parts by ``chunk`` read by different layers: each part is one
    layer's output, so the two layers must lose the same number of channels."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Linear(12, 32)
        self.a, self.b = torch.nn.Linear(32, 48), torch.nn.Linear(32, 48)
        self.p, self.q = torch.nn.Linear(48, 40), torch.nn.Linear(48, 40)
        self.head = torch.nn.Linear(40, 5)

    def forward(self, x):
        x = self.stem(x).relu()
        first, second = torch.cat([self.a(x), self.b(x)], -1).relu().chunk(2, dim=-1)
        return self.head(self.p(first).relu() * self.q(second).sigmoid())


def test_layers_concatenated_then_chunked_are_pruned_together(caplog):
    """The chunk's parts come from two channel groups: joined into one whose unit is channel i of every part."""
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        model, _, kept = _pruned_and_replayed(lambda: (_ConcatThenChunk().eval(), torch.randn(4, 12)))
    assert "a chunk cuts the channels" not in caplog.text
    assert model.a.out_features == model.b.out_features == model.p.in_features == model.q.in_features < 48
    assert abs(kept - 0.5) <= 0.02


def test_a_plan_that_breaks_the_model_is_repaired_by_protecting_the_group_responsible(caplog):
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        model, x, kept = _pruned_and_replayed(unseen.hard_coded_width)
    assert "Pruning group mix breaks the model" in caplog.text
    assert model.mix.out_features == 64 and model.body.out_features < 96
    assert kept < 0.8


@pytest.mark.parametrize("build", [lambda: (cnn.resnet18(10).eval(), torch.randn(1, 3, 32, 32)), hf.bert,
                                   hf.mobilenet_v2], ids=["resnet18", "bert", "mobilenet_v2"])
def test_the_macs_budget_lands_within_two_points(build):
    torch.manual_seed(0)
    model, x = build()
    call = as_call_params(x)
    dense = sum(profile(model, call)[2].values())
    PruneTorch(model, call).prune(0.7, budget="macs")
    assert abs(sum(profile(model, call)[2].values()) / dense - 0.7) <= 0.02


def test_the_macs_budget_removes_more_compute_than_the_parameter_budget():
    torch.manual_seed(0)
    model, x = cnn.resnet18(10).eval(), torch.randn(1, 3, 32, 32)
    call = as_call_params(x)
    by_params, by_macs = copy.deepcopy(model), copy.deepcopy(model)
    PruneTorch(by_params, x).prune(0.6)
    PruneTorch(by_macs, x).prune(0.6, budget="macs")
    assert sum(profile(by_macs, call)[2].values()) < sum(profile(by_params, call)[2].values())


def test_the_latency_budget_plans_by_measured_trials_and_refuses_an_unknown_budget(caplog):
    """The speed-up itself is measured by benchmarks/bench_prune.py on an idle machine, not in a unit test."""
    torch.manual_seed(0)
    model, x = cnn.resnet18(10).eval(), torch.randn(2, 3, 32, 32)
    dense = copy.deepcopy(model)
    call = as_call_params(x)
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        desc = PruneTorch(model, x).prune(0.5, budget="latency")
    assert "Latency budget: MACs kept 50.0% -> latency" in caplog.text
    assert sum(profile(model, call)[2].values()) < sum(profile(dense, call)[2].values())
    replayed = copy.deepcopy(dense)
    PruneTorch(replayed, x).prune_by_desc(desc)
    torch.testing.assert_close(replayed(x), model(x))
    with pytest.raises(ValueError, match="budget must be one of"):
        PruneTorch(dense, x).prune(0.5, budget="flops")


def test_a_pruned_model_still_traces_and_exports():
    torch.manual_seed(0)
    model, x = cnn.resnet18(10).eval(), torch.randn(1, 3, 32, 32)
    PruneTorch(model, x).prune(0.5)
    traced = torch.jit.trace(model, x)
    torch.testing.assert_close(traced(x), model(x))
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


def test_a_pruned_hugging_face_model_round_trips_through_save_pretrained(tmp_path):
    torch.manual_seed(0)
    model, inputs = hf.llama()
    call = as_call_params(inputs)
    PruneTorch(model, call).prune(0.5)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)


def _olmo2():
    cfg = T.Olmo2Config(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                        num_key_value_heads=4, intermediate_size=96, max_position_embeddings=32, eos_token_id=None,
                        pad_token_id=None, bos_token_id=None)
    return T.Olmo2ForCausalLM(cfg), "model.layers.{}.self_attn"


def _gated_attention():
    cfg = T.MuseGlimmerTextConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                  num_key_value_heads=4, head_dim=16, intermediate_size=96,
                                  max_position_embeddings=32, sliding_window=8, eos_token_id=None,
                                  bos_token_id=None)
    return T.MuseGlimmerTextModel(cfg), "layers.{}.self_attn"


@pytest.mark.parametrize("build", [_olmo2, _gated_attention], ids=["olmo2_qk_norm", "output_gate"])
def test_layers_laid_out_by_heads_are_pruned_with_their_heads(build, caplog):
    """OLMo-2 normalises the whole query and key projections (q_norm, k_norm); some attentions gate their output
    with one Linear value per query channel (gate_proj). Both follow the heads they belong to."""
    torch.manual_seed(0)
    model, attention = build()
    model.eval()
    batch = {"input_ids": torch.randint(2, 96, (2, 10), generator=torch.Generator().manual_seed(1))}
    fresh = copy.deepcopy(model)
    before = _params(model)
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        desc = PruneTorch(model, CallParams(**batch)).prune(0.6)
    assert "breaks the model" not in caplog.text and "Protected from pruning" not in caplog.text
    assert abs(_params(model) / before - 0.6) <= 0.02
    for layer in range(2):
        attn = model.get_submodule(attention.format(layer))
        q_rows, k_rows = attn.q_proj.out_features, attn.k_proj.out_features
        assert q_rows < 8 * 16
        for name, module in attn.named_children():
            if name.startswith("q_norm") or name == "gate_proj":
                assert (module.weight.shape[0]) == q_rows
            if name == "k_norm":
                assert module.weight.shape[0] == k_rows
    PruneTorch(fresh, CallParams(**batch)).prune_by_desc(desc)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch)[0], model(**batch)[0])


def test_sample_inputs_the_model_refuses_and_a_nan_ratio_are_clear_errors():
    """The model's own error on the sample inputs stays a RuntimeError (as the original raised it) and is also a
    ValueError naming the inputs as the fault."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with pytest.raises(RuntimeError, match="fails on the sample inputs .RuntimeError: .*expected input.* to have 3 ch"):
        PruneTorch(model, torch.randn(1, 5, 8, 8))
    with pytest.raises(ValueError, match="fails on the sample inputs"):
        PruneTorch(model, torch.randn(1, 5, 8, 8))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="prune ratio must be a number"):
        PruneTorch(model, torch.randn(1, 3, 8, 8)).prune(float("nan"))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
