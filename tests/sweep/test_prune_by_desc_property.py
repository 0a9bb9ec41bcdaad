"""Property test of ``PruneTorch.prune_by_desc`` (issue 11, the permanent guard): whatever the desc - real and
bogus module names, masks of random lengths and characters, kept counts of any type, nested junk, random
``__meta__`` - the call either succeeds (and the model then runs) or raises a documented error (a TypeError or
ValueError subclass) and leaves the state dict identical with the same Parameter objects."""
import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msmodelslim.pytorch.prune.layers import layer_spec
from msmodelslim.pytorch.prune.prune_torch import CallParams, PruneTorch
from sweep.prune_sweep_support import Snapshot, cnn_desc, cnn_input, llama, runs, small_cnn, token_ids

ROLES = ("output", "input")
MASK_CHARS = "-" * 6 + "x" * 4 + ".*é;"
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 200) | st.floats(allow_nan=True) | st.text("-x a;é", max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("abio_-", max_size=6), inner, max_size=3),
    max_leaves=8)
BOGUS_NAMES = ("zzz", "", "3.weight", "model..layers", "0;rm -rf /", "model.layers.7.mlp", "lm_head.bias",
               "__meta__x", "é")
CONFIG_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                 "head_dim", "max_position_embeddings", "rope_theta", "bogus_field")
PATCH_ATTRS = ("groups", "num_heads", "head_dim", "in_features", "forward", "__class__", "training", "weight")


def prunable(model):
    """``{module name: {role: channels}}`` of the layers a desc may name."""
    sizes = {}
    for name, module in model.named_modules():
        spec = layer_spec(module)
        if spec is not None:
            sizes[name] = {role: spec.size(role) for role in spec.roles()}
    return sizes


@st.composite
def masks(draw, size):
    """``[kept, mask]`` for a layer of ``size`` channels: usually well-formed, sometimes not."""
    length = draw(st.one_of(st.just(size), st.just(size), st.integers(0, size + 3)))
    mask = "".join(draw(st.lists(st.sampled_from(MASK_CHARS if draw(st.booleans()) else "-x"),
                                 min_size=length, max_size=length)))
    kept = draw(st.one_of(st.just(mask.count("-")), st.just(mask.count("-")), st.integers(-2, size + 2),
                          st.booleans(), st.floats(allow_nan=True), st.text("0123", max_size=2), JUNK))
    return draw(st.one_of(st.just([kept, mask]), st.just([kept, mask]), st.just((kept, mask)),
                          st.just([kept, mask, 1]), JUNK))


@st.composite
def entries(draw, sizes, name):
    """A desc entry for module ``name`` (its real sizes when it is a layer)."""
    real = sizes.get(name) or {"output": draw(st.integers(1, 40))}
    roles = draw(st.lists(st.sampled_from(ROLES + ("weights",)), min_size=0, max_size=2, unique=True))
    entry = {}
    for role in roles:
        size = real.get(role) or next(iter(real.values()))
        entry[role] = draw(masks(size))
    return draw(st.one_of(st.just(entry), st.just(entry), st.just(entry), JUNK))


@st.composite
def metas(draw, model):
    """A ``__meta__``: absent, junk, or a dict with random format, patches, config and axes."""
    names = [n for n, _ in model.named_modules()]
    meta = {"format": draw(st.sampled_from(["msmodelslim-prune-desc"] * 4 + ["other", 3])),
            "version": draw(st.sampled_from([1, 1, 1, 0, 99, True, "1", 1.0]))}
    if draw(st.booleans()):
        meta["patches"] = draw(st.dictionaries(st.sampled_from(names + list(BOGUS_NAMES)), st.one_of(
            st.dictionaries(st.sampled_from(PATCH_ATTRS), st.one_of(st.integers(-1, 70), JUNK), max_size=2), JUNK),
            max_size=2))
    if draw(st.booleans()):
        meta["config"] = draw(st.one_of(st.dictionaries(st.sampled_from(CONFIG_FIELDS),
                                                        st.one_of(st.integers(-1, 600), JUNK), max_size=3), JUNK))
    if draw(st.booleans()):
        meta["axes"] = draw(st.one_of(st.dictionaries(st.sampled_from(names + ["cls", "lm_head.weight"]),
                                                      st.one_of(st.integers(-4, 4), JUNK), max_size=2), JUNK))
    return draw(st.one_of(st.just(meta), st.just(meta), st.just(meta), JUNK))


@st.composite
def descs(draw, model, base):
    """``base`` (a valid desc) mutated: entries dropped, replaced or added, ``__meta__`` replaced or kept."""
    sizes = prunable(model)
    names = sorted(sizes) + list(BOGUS_NAMES)
    desc = copy.deepcopy(base) if draw(st.booleans()) else {}
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["drop", "replace", "add"]))
        if action == "drop" and desc:
            desc.pop(draw(st.sampled_from(sorted(desc))))
        elif action == "replace" and desc:
            name = draw(st.sampled_from(sorted(desc)))
            desc[name] = draw(entries(sizes, name)) if name != "__meta__" else draw(metas(model))
        else:
            name = draw(st.sampled_from(names))
            desc[name] = draw(entries(sizes, name))
    if draw(st.integers(0, 3)) == 0:
        desc["__meta__"] = draw(metas(model))
    return desc


def check_property(model, inputs, desc):
    """The call succeeds and the model runs, or raises TypeError/ValueError leaving the model identical."""
    call = CallParams(**inputs) if isinstance(inputs, dict) else inputs
    pruner = PruneTorch(model, call, align=8)
    snapshot = Snapshot(model)
    try:
        pruner.prune_by_desc(desc)
    except (TypeError, ValueError):
        snapshot.assert_identical()
        return "refused"
    assert runs(model, inputs)
    return "applied"


PROPERTY = settings(max_examples=80, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def llama_base():
    """A tiny Llama and the desc PruneTorch plans for it."""
    model = llama()
    return model, PruneTorch(copy.deepcopy(model), CallParams(input_ids=token_ids())).analysis(0.5)[1]


@PROPERTY
@given(data=st.data())
def test_cnn_prune_by_desc_succeeds_or_refuses_cleanly(data):
    base_model = small_cnn()
    desc = data.draw(descs(base_model, cnn_desc()))
    check_property(base_model, cnn_input(), desc)


@PROPERTY
@given(data=st.data())
def test_llama_prune_by_desc_succeeds_or_refuses_cleanly(llama_base, data):
    base_model, base_desc = llama_base
    model = copy.deepcopy(base_model)
    desc = data.draw(descs(model, base_desc))
    check_property(model, {"input_ids": token_ids()}, desc)


def test_the_strategies_reach_both_outcomes(llama_base):
    """The generated descs are not all refused: the valid base descs apply (guards the property's reach)."""
    base_model, base_desc = llama_base
    assert check_property(small_cnn(), cnn_input(), cnn_desc()) == "applied"
    assert check_property(copy.deepcopy(base_model), {"input_ids": token_ids()}, copy.deepcopy(base_desc)) == "applied"
