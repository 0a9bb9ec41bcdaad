"""The quick slice of the Hugging Face sweep (benchmarks/bench_prune_sweep.py): one model type per structural kind
(encoder, decoder with grouped-query attention, encoder-decoder with relative position bias, windowed vision
attention, disentangled relative positions, convolutional, audio), shrunk from its default config and pruned to 50 %
of the parameters by PruneTorch, each in a child process under a time limit. Nothing may crash, and every type is
either pruned to the budget (replayable, same output shape) or refused with a documented error and the model
unchanged."""
import importlib.util
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
