"""The quick slice of the Hugging Face sweep (benchmarks/bench_prune_sweep.py): one model type per structural kind
(encoder, decoder with grouped-query attention, encoder-decoder with relative position bias, windowed vision
attention, disentangled relative positions, convolutional, audio), shrunk from its default config and pruned to 50 %
of the parameters by PruneTorch, each in a child process under a time limit. Nothing may crash, and every type is
either pruned to the budget (replayable, same output shape) or refused with a documented error and the model
unchanged."""
import importlib.util
import logging
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[3] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def _load():
    spec = importlib.util.spec_from_file_location("bench_prune_sweep", BENCHMARKS / "bench_prune_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = _load()


@pytest.fixture(scope="module")
def quick():
    types = sweep.model_types()
    names = sweep.select(types, quick=True)
    return names, sweep.sweep(names, types, tools=("msmodelslim",), jobs=1, progress=None)


def test_quick_slice_covers_every_structural_kind():
    types = sweep.model_types()
    assert sweep.select(types, quick=True) == list(sweep.QUICK)
    assert len(types) > 300  # every model type of the auto mappings, one class each
    assert all(isinstance(cls, str) and mapping.endswith("_MAPPING_NAMES") for cls, mapping in types.values())


def test_quick_slice_builds_small(quick):
    names, results = quick
    unbuildable = {n: results[n]["msmodelslim"]["message"] for n in names
                   if results[n]["msmodelslim"]["outcome"] == "unbuildable"}
    assert not unbuildable
    assert all(results[n]["msmodelslim"]["params"] <= sweep.MAX_PARAMS for n in names)


def test_quick_slice_nothing_crashes(quick):
    names, results = quick
    crashed = {n: {k: results[n]["msmodelslim"].get(k) for k in ("error", "frame", "message")}
               for n in names if results[n]["msmodelslim"]["outcome"] == "crashed"}
    assert crashed == {}


def test_quick_slice_is_pruned_short_with_a_reason_or_refused_unchanged(quick):
    names, results = quick
    outcomes = {n: results[n]["msmodelslim"]["outcome"] for n in names}
    assert set(outcomes.values()) <= {"pruned", "short", "refused"}, outcomes
    assert "pruned" in outcomes.values()
    for name in names:
        result = results[name]["msmodelslim"]
        if result["outcome"] == "pruned":
            assert abs(result["kept"] - sweep.TARGET) <= sweep.TOLERANCE
        if result["outcome"] == "short":
            assert result["kept"] > sweep.TARGET and result.get("message"), result


def test_reduced_config_is_counted_on_meta_before_building():
    import transformers

    config = sweep.small_config("llama")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 4)
    assert config.num_key_value_heads == 2 and config.vocab_size <= 1000
    params = sweep.meta_params(transformers.LlamaForCausalLM, config)
    assert 0 < params < 1_000_000


def test_classification_of_a_documented_refusal_and_of_a_crash():
    from msmodelslim.errors import SchemaValidateError

    def raise_here(error):
        raise error

    with pytest.raises(SchemaValidateError) as documented:
        raise_here(SchemaValidateError("bad type"))
    assert sweep._documented(documented.value)
    with pytest.raises(IndexError) as other:
        raise_here(IndexError("index 4 is out of bounds"))
    assert not sweep._documented(other.value)
    with pytest.raises(ValueError) as foreign:  # raised here, not inside msmodelslim: not a documented refusal
        raise_here(ValueError("from elsewhere"))
    assert not sweep._documented(foreign.value)


def _prune_built(model_type, cls_name, caplog, ratio=0.6):
    """Build ``model_type`` as the sweep does, prune it with default settings, replay the desc on a fresh copy."""
    import copy
    import json

    import torch

    from msmodelslim.pytorch.prune.prune_torch import CallParams, PruneTorch

    model, inputs, _ = sweep.build(model_type, cls_name)
    fresh, before = copy.deepcopy(model), sweep.count(model)
    shape = sweep.main_output(sweep.run_model(model, inputs)).shape
    log = logging.getLogger("msmodelslim")  # it does not propagate: pytest's handler is attached to it
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="msmodelslim"):
            desc = PruneTorch(model, CallParams(**inputs)).prune(ratio)
    finally:
        log.removeHandler(caplog.handler)
    torch.manual_seed(0)  # some models draw at run time (ViT-MAE's random masking)
    out = sweep.main_output(sweep.run_model(model, inputs))
    assert out.shape == shape
    PruneTorch(fresh, CallParams(**inputs)).prune_by_desc(json.loads(json.dumps(desc)))
    torch.manual_seed(0)
    torch.testing.assert_close(sweep.main_output(sweep.run_model(fresh, inputs)), out)
    return model, desc, sweep.count(model) / before


def test_a_heterogeneous_config_is_left_alone_instead_of_refusing_the_model(caplog):
    """Gemma 4 keeps head_dim per layer; reading the global value raises inside transformers. The pruning goes
    ahead; the desc sets no config field, and the log says to rebuild from the desc."""
    _, desc, kept = _prune_built("gemma4_text", "Gemma4ForCausalLM", caplog)
    assert kept < 0.9
    assert not desc["__meta__"].get("config")
    assert "config cannot describe the pruned shapes (head_dim" in caplog.text


def test_a_plan_stopped_early_names_the_groups_it_could_not_touch(caplog):
    """A headless encoder's residual stream is its output: the default un_prune_list keeps its last layer, and the
    INFO line that reports the shortfall says so."""
    _, _, kept = _prune_built("vit_mae", "ViTMAEModel", caplog)
    assert kept > sweep.TARGET + sweep.TOLERANCE
    line = next(line for line in caplog.text.splitlines() if "Pruning stopped early" in line)
    assert "protected: hidden - layers.1.mlp.fc2 is in un_prune_list (by default" in line


def test_repairs_are_counted_per_replan_not_per_protected_group():
    """Each repair protects a group with its siblings in every layer: a model that needs a few repairs of many
    siblings each is repaired, not refused once the protected groups outnumber the repair limit."""
    from types import SimpleNamespace

    from msmodelslim.pytorch.prune import recovery
    from msmodelslim.pytorch.prune.groups import ChannelGroup, Member

    # 8 layers x 4 kinds of group; the kinds q, k and v break the model, each in every layer
    groups = [ChannelGroup(name=f"layers.{i}.{kind}", size=4, kind="ffn",
                           members=[Member(f"layers.{i}.{kind}", "output", [0, 1, 2, 3], [0, 1, 2, 3])])
              for i in range(8) for kind in "qkvo"]
    breaking = {g for g, group in enumerate(groups) if not group.name.endswith(".o")}
    plans = []

    def plan(blamed):
        plans.append(set(blamed))
        return SimpleNamespace(groups=groups, removed={g: [0] for g in range(len(groups)) if g not in blamed})

    def apply(planned):
        if breaking & set(planned.removed):
            raise ValueError("the pruned model fails to run")
        return planned

    planned = recovery.prune_with_recovery(plan, apply, lambda planned, subset: not breaking & set(subset))
    assert set(planned.removed) == set(range(len(groups))) - breaking
    assert len(plans) == 4 and len(breaking) > recovery.MAX_REPLANS


def test_an_ffn_with_a_layer_the_family_rules_do_not_name_is_completed_from_the_graph(caplog):
    """SegFormer's Mix-FFN runs a depthwise convolution between its two projections. The family rules name only
    the projections; the dependency graph adds the convolution to the FFN group, so the FFN shrinks (before, the
    first plan broke the model and every FFN was protected)."""
    model, _, kept = _prune_built("segformer", "SegformerForImageClassification", caplog)
    assert "ffn also reaches" in caplog.text and "dwconv" in caplog.text
    assert "ffn breaks the model" not in caplog.text
    mix_ffns = [module for name, module in model.named_modules() if name.endswith(".mlp")]
    assert mix_ffns
    for mix_ffn in mix_ffns:
        assert mix_ffn.dwconv.dwconv.out_channels == mix_ffn.fc1.out_features == mix_ffn.fc2.in_features
    assert any(m.fc1.out_features < m.fc2.out_features * 4 for m in mix_ffns)  # the config's mlp_ratio is 4
    assert abs(kept - 0.6) <= 0.02  # each stage's residual stream shrinks too (below)


# confirmed stages: Swin's patch merging concatenates four neighbours into the next stage, so the graph does not
# map those streams one to one and only its last stage's is pruned (the others stay protected, as the log says)
@pytest.mark.parametrize("model_type, cls_name, stages", [("segformer", "SegformerForImageClassification", 4),
                                                          ("swin", "SwinForImageClassification", 1)])
def test_each_stage_of_a_hierarchical_model_has_its_own_residual_stream(caplog, model_type, cls_name, stages):
    """SegFormer and Swin widen their residual stream from stage to stage. One hidden group sized by the first
    stage described none of them (it was protected: short of the budget); one group per stage, completed by the
    dependency graph (patch embeddings, downsampling, sequence reduction, stage norms), reaches the budget, and
    a stage whose width forward() reads from the config is repaired, not broken."""
    model, desc, kept = _prune_built(model_type, cls_name, caplog)
    assert caplog.text.count("Group hidden of ") == stages
    assert caplog.text.count("a stage of a hierarchical model") == 4 - stages
    assert abs(kept - 0.6) <= 0.02, kept


def test_a_plan_that_cuts_one_tensor_twice_is_repaired_not_a_crash(caplog):
    """DeBERTa (v1) keeps per-head biases beside a fused projection; a plan in which two groups claim the same
    bias used to end in a raw IndexError while slicing. It is now a failed trial like a model that no longer runs:
    the model is restored, the groups responsible are protected, and the rest is pruned."""
    _, _, kept = _prune_built("deberta", "DebertaForSequenceClassification", caplog)
    assert "output.dense breaks the model (index out of range" in caplog.text
    assert kept < 0.95


def test_lfm2_rotary_tables_do_not_stop_the_graph_build():
    """The fold map (graph_tiling) walks up from every reshape that widens its last axis; through LFM2's rotary
    table (a transposed product of lower-rank operands) it once indexed past a tensor's rank and the graph build
    failed (GraphTraceError: the model was refused)."""
    from msmodelslim.pytorch.prune.graph import torch_pruning_groups
    from msmodelslim.pytorch.prune.prune_torch import CallParams

    model, inputs, _ = sweep.build("lfm2", sweep.model_types()["lfm2"][0])
    call = CallParams(**inputs)
    groups = torch_pruning_groups(model, call)
    assert any(not group.protected for group in groups)


def test_channels_the_graph_cannot_index_do_not_stop_the_group_listing():
    """Jamba's Mamba mixer: torch-pruning's index maps fail on some of its operations, which leave channels without
    an index in a group. Listing the groups of the layers only partly covered by earlier ones once counted those
    indices and failed (GraphTraceError: the model was refused instead of pruned as far as the rest allows)."""
    from msmodelslim.pytorch.prune.graph import torch_pruning_groups
    from msmodelslim.pytorch.prune.prune_torch import CallParams

    model, inputs, _ = sweep.build("jamba", sweep.model_types()["jamba"][0])
    groups = torch_pruning_groups(model, CallParams(**inputs))
    assert groups
