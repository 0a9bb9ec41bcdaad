"""Replay of the bad-input sweep (2026-11-26) rows A01-A27 (PruneTorch), D01-D13 (prune_model_weight) and P12 at
the API level. Each test is one row (its id is in the pytest id); every error is checked for its type, for a
message naming the culprit, and for a model left identical (values, tensor objects, attributes, config)."""
import copy
import json
import os
import time

import pytest
import torch
import transformers as T
from torch import nn

from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
from msmodelslim.errors import CheckpointError, UnsafeCheckpointError
from msmodelslim.pytorch.prune.graph import GraphTraceError
from msmodelslim.pytorch.prune.prune_torch import CallParams, PruneTorch
from msmodelslim.utils.checkpoint import save_state_dict
from msmodelslim.utils.checks import check_input_path
from sweep.prune_sweep_support import (Snapshot, cnn_desc, cnn_input, half_mask, llama, runs, save, small_cnn,
                                       token_ids)

BELONGS = "Please Check whether desc belongs to the network."
VOCAB_BERT = 64


def refused(model, call, error, match, inputs=None):
    """``call()`` raises ``error`` matching ``match`` and ``model`` is left identical."""
    snapshot = Snapshot(model)
    with pytest.raises(error, match=match or None) as info:
        call()
    snapshot.assert_identical()
    if inputs is not None:
        assert runs(model, inputs)
    return info.value


def cnn_pruner(model=None, **kwargs):
    model = model if model is not None else small_cnn()
    return model, PruneTorch(model, cnn_input(), align=8, **kwargs)


def with_entry(**entries):
    desc = cnn_desc()
    desc.update(entries)
    return desc


def deep(levels):
    value = []
    for _ in range(levels):
        value = [value]
    return value


# --------------------------------------------------------------------------------------- A: prune_by_desc refusals
DESC_REFUSALS = [
    pytest.param(None, TypeError, "parameter desc must be dict", id="A01-none"),
    pytest.param([], TypeError, "parameter desc must be dict", id="A01-list"),
    pytest.param('{"3": {"output": [16, "-"]}}', TypeError, "parameter desc must be dict", id="A01-json-text"),
    pytest.param({"3": {"output": [16, "-" * 16]}}, ValueError,
                 "Module '3': the 'output' mask has 16 channels, the layer has 32", id="A02"),
    pytest.param({"3": {"output": [-1, "-" * 32]}}, ValueError, "'output' says -1 channels are kept, its mask keeps 32",
                 id="A03-negative"),
    pytest.param({"3": {"output": [5, "-" * 32]}}, ValueError, "'output' says 5 channels are kept", id="A03-count"),
    pytest.param({"3": {"output": [True, half_mask()]}}, ValueError, r"Module '3': 'output' must be \[kept_count",
                 id="A04-bool"),
    pytest.param({"3": {"output": [16.0, half_mask()]}}, ValueError, r"'output' must be \[kept_count", id="A04-float"),
    pytest.param({"3": {"output": ["16", half_mask()]}}, ValueError, r"'output' must be \[kept_count", id="A04-str"),
    pytest.param({"3": {"output": {"kept": 16}}}, ValueError, r"'output' must be \[kept_count", id="A04-dict"),
    pytest.param({"zzz": {"output": [1, "-"]}}, ValueError, "Module 'zzz': no module 'zzz'", id="A05-unknown"),
    pytest.param(with_entry(zzz={"output": [1, "-"]}), ValueError, "Module 'zzz': no module 'zzz'",
                 id="A05-after-valid"),
    pytest.param({"0;rm -rf /": {"output": [1, "-"]}}, ValueError, "desc contains invalid characters.",
                 id="A06-name"),
    pytest.param({"a" * 600: {"output": [1, "-"]}}, ValueError, "desc contains invalid characters.", id="A06-long"),
    pytest.param({"3": {"output": [16, "é" * 32]}}, ValueError, "desc contains invalid characters.", id="A06-mask"),
    pytest.param({"3": 5}, ValueError, "Module '3': an entry must be a dict with 'output', 'input' and/or 'inner'",
                 id="A07-int"),
    pytest.param({"3": {"weights": [16, half_mask()]}}, ValueError, "Module '3': an entry must be a dict",
                 id="A07-role"),
    pytest.param({"3": {"output": [0, "x" * 32]}}, ValueError, "Module '3': 'output' keeps no channel", id="A08"),
    pytest.param(with_entry(__meta__={"format": "msmodelslim-prune-desc", "version": 99}), ValueError,
                 "Unsupported desc format .* version 99", id="A09"),
    pytest.param({"3": {"output": [16, half_mask()]}}, ValueError, "fails to run", id="A14"),
    pytest.param({"3": {"output": deep(50_000)}}, ValueError, "desc is nested more than 16 levels deep",
                 id="A17-list"),
    pytest.param({"__meta__": {"patches": {"3": deep(50_000)}}}, ValueError, "nested more than 16 levels",
                 id="A17-meta"),
]


@pytest.mark.parametrize("desc, error, match", DESC_REFUSALS)
def test_desc_refused_model_identical(desc, error, match):
    model, pruner = cnn_pruner()
    refused(model, lambda: pruner.prune_by_desc(desc), error, match, cnn_input())


def test_A10_meta_empty_list_is_treated_as_absent():
    model, pruner = cnn_pruner()
    pruner.prune_by_desc(with_entry(__meta__=[]))
    assert model[3].out_channels == 16 and model[4].num_features == 16 and model[8].in_features == 16
    assert runs(model, cnn_input())


@pytest.mark.parametrize("patch, match", [
    pytest.param({"patches": {"model.nope": {"num_heads": 2}}}, "Module 'model.nope': the module to patch does not",
                 id="A11-module"),
    pytest.param({"config": {"bogus_field": 3}}, "The model config has no field 'bogus_field'", id="A11-field"),
    pytest.param({"patches": {"model.layers.0.self_attn": {"head_dim": 3}}}, "fails to run", id="A12-head_dim"),
    pytest.param({"patches": {"model.layers.0.self_attn": {"forward": 3}}},
                 "attribute 'forward' is not an integer", id="A12-forward"),
    pytest.param({"patches": {"": {"__class__": "x"}}}, "__class__", id="A13"),
])
def test_llama_meta_patches_refused_and_restored(patch, match):
    model = llama()
    pruner = PruneTorch(model, CallParams(input_ids=token_ids()))
    meta = {"format": "msmodelslim-prune-desc", "version": 1, **patch}
    error = refused(model, lambda: pruner.prune_by_desc({"__meta__": meta}), ValueError, match,
                    {"input_ids": token_ids()})
    assert type(model) is T.LlamaForCausalLM and model.model.layers[0].self_attn.head_dim == 16
    assert BELONGS in str(error)


def test_A12_conv_groups_patch_restored():
    model, pruner = cnn_pruner()
    desc = {"__meta__": {"format": "msmodelslim-prune-desc", "version": 1, "patches": {"3": {"groups": 7}}}}
    refused(model, lambda: pruner.prune_by_desc(desc), ValueError, "fails to run", cnn_input())
    assert model[3].groups == 1


def test_A15_A16_huge_descs_fail_fast():
    model, pruner = cnn_pruner()
    bogus = {f"bogus{i}": {"output": [1, "-"]} for i in range(200_000)}
    start = time.perf_counter()
    refused(model, lambda: pruner.prune_by_desc(bogus), ValueError, "Module 'bogus0'")
    refused(model, lambda: pruner.prune_by_desc({"3": {"output": [16, "-" * 10_000_016]}}), ValueError,
            "mask has 10000016 channels, the layer has 32")
    assert time.perf_counter() - start < 10


def test_A18_same_desc_twice_refused_once_pruned_model_kept():
    model, pruner = cnn_pruner()
    pruner.prune_by_desc(cnn_desc())
    refused(model, lambda: pruner.prune_by_desc(cnn_desc()), ValueError,
            "Module '3': the 'output' mask has 32 channels, the layer has 16", cnn_input())


def test_A19_keyboard_interrupt_in_the_post_prune_forward_restores():
    model, pruner = cnn_pruner()
    armed = []

    def interrupt(module, inputs, output):
        if armed:
            raise KeyboardInterrupt  # deliberate fault injection: Ctrl-C during the post-prune check

    model[8].register_forward_hook(interrupt)
    armed.append(True)
    refused(model, lambda: pruner.prune_by_desc(cnn_desc()), KeyboardInterrupt, "")


class Shared(nn.Module):
    """One Linear registered as ``a`` and ``b`` (the sweep's A20 model)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(16, 32)
        self.b = self.a
        self.c = nn.Linear(32, 4)

    def forward(self, x):
        return self.c(torch.relu(self.a(x)))


def test_A20_one_module_two_names_conflicting_masks_names_both():
    model = Shared().eval()
    pruner = PruneTorch(model, torch.randn(2, 16), align=8)
    desc = {"a": {"output": [16, half_mask()]}, "b": {"output": [16, half_mask(first_kept=False)]},
            "c": {"input": [16, half_mask()]}}
    error = refused(model, lambda: pruner.prune_by_desc(desc), ValueError, "'a' and 'b'", torch.randn(2, 16))
    assert "registered under two names" in str(error) and "'output'" in str(error)


def test_A20_one_module_two_names_same_mask_applies_once():
    model = Shared().eval()
    pruner = PruneTorch(model, torch.randn(2, 16), align=8)
    expected = model.a.weight[:16].clone()
    pruner.prune_by_desc({"a": {"output": [16, half_mask()]}, "b": {"output": [16, half_mask()]},
                          "c": {"input": [16, half_mask()]}})
    assert model.a is model.b and model.a.out_features == 16 and torch.equal(model.a.weight, expected)
    assert runs(model, torch.randn(2, 16))


@pytest.fixture(scope="module")
def llama_desc():
    """A desc planned by PruneTorch for :func:`llama` (it prunes the hidden size and sets ``hidden_size``); with the
    original's protection of the first and last layers and alignment, so the pruned sizes below are fixed."""
    return PruneTorch(llama(), CallParams(input_ids=token_ids()), align=16).analysis(0.5, [0, -1])[1]


@pytest.mark.parametrize("field, value, match", [
    pytest.param("vocab_size", 7, "config.vocab_size = 7, which contradicts the pruned weights: the input "
                 "embedding has 128 rows", id="A21-vocab"),
    pytest.param("hidden_size", 48, "config.hidden_size = 48, which contradicts .* 32 hidden channels",
                 id="A21-hidden"),
    pytest.param("intermediate_size", 64, "config.intermediate_size = 64, .* every layer has 128 FFN neurons",
                 id="A21-ffn"),
    pytest.param("num_attention_heads", 8, "config.num_attention_heads = 8, .* 4 attention heads", id="A21-heads"),
    pytest.param("max_position_embeddings", 32, "changes config.max_position_embeddings from 64 to 32, and no "
                 "pruned tensor shape explains", id="A21-unexplained"),
    pytest.param("rope_theta", 2.5, "config field 'rope_theta' must be set to a positive integer", id="A21-float"),
])
def test_A21_config_that_contradicts_the_weights_is_refused(llama_desc, field, value, match):
    desc = copy.deepcopy(llama_desc)
    desc["__meta__"]["config"][field] = value
    model = llama()
    pruner = PruneTorch(model, CallParams(input_ids=token_ids()))
    refused(model, lambda: pruner.prune_by_desc(desc), ValueError, match, {"input_ids": token_ids()})
    assert model.config.vocab_size == 128 and model.config.hidden_size == 64


def test_A21_planned_config_applies_and_reloads(llama_desc, tmp_path):
    model = llama()
    PruneTorch(model, CallParams(input_ids=token_ids())).prune_by_desc(copy.deepcopy(llama_desc))
    assert model.config.hidden_size == 32 == model.model.embed_tokens.embedding_dim
    model.save_pretrained(tmp_path)
    reloaded = T.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = token_ids()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("call, error, match", [
    pytest.param(lambda p: p.analysis(1), TypeError, "prune ratio must be float", id="A22-ratio"),
    pytest.param(lambda p: p.analysis(0.5, "0"), TypeError, "un_prune_list must be a list", id="A22-list"),
    pytest.param(lambda p: p.analysis(0.5, [1.5]), ValueError, "Element of un_prune_list must be str or int",
                 id="A22-element"),
    pytest.param(lambda p: p.set_node_reserved_ratio(1.5), ValueError, "node max prune ratio must in", id="A22-node"),
])
def test_A22_bad_arguments(call, error, match):
    model, pruner = cnn_pruner()
    refused(model, lambda: call(pruner), error, match)


def test_A22_inputs_none():
    model = small_cnn()
    refused(model, lambda: PruneTorch(model, None), TypeError, "inputs must be type Tensor")


@pytest.mark.parametrize("timeout, error, match", [
    pytest.param("abc", TypeError, "trace_timeout must be a number of seconds .* not str 'abc'", id="A23-str"),
    pytest.param(None, TypeError, "trace_timeout must be a number", id="A23-none"),
    pytest.param(True, TypeError, "trace_timeout must be a number", id="A23-bool"),
    pytest.param(float("nan"), ValueError, "trace_timeout must be a number of seconds, not NaN", id="A23-nan"),
])
def test_A23_trace_timeout_checked_at_construction(timeout, error, match):
    model = small_cnn()
    refused(model, lambda: PruneTorch(model, cnn_input(), trace_timeout=timeout), error, match)


@pytest.mark.parametrize("timeout", [pytest.param(0, id="A24-zero"), pytest.param(-5, id="A24-negative")])
def test_A24_no_time_budget_gives_a_clear_error(timeout):
    model, pruner = cnn_pruner(trace_timeout=timeout)
    refused(model, lambda: pruner.analysis(0.5), GraphTraceError, f"did not finish within {timeout:g} s")


def test_A24_infinite_budget_waits():
    model, pruner = cnn_pruner(trace_timeout=float("inf"))
    assert pruner.analysis(0.5)[0] > 0


def test_A25_input_that_does_not_fit_fails_in_the_constructor():
    model = small_cnn()
    refused(model, lambda: PruneTorch(model, torch.randn(1, 5, 16, 16)), RuntimeError, "channels")


@pytest.mark.parametrize("value", [pytest.param(float("nan"), id="A26-nan"), pytest.param(float("inf"), id="A26-inf"),
                                   pytest.param(float("-inf"), id="A26-neg-inf")])
def test_A26_non_finite_importance_is_refused_naming_the_group(value):
    model, pruner = cnn_pruner()
    pruner.set_importance_evaluation_function(lambda w: value)
    error = refused(model, lambda: pruner.prune(0.5), ValueError, "importance function returned")
    assert "must return a finite number" in str(error) and "layer '" in str(error) and "group '" in str(error)


@pytest.mark.parametrize("fn, error, match", [
    pytest.param(lambda w: 1 / 0, ZeroDivisionError, "division by zero", id="A27-raises"),
    pytest.param(lambda w: "big", ValueError, "could not convert string to float: 'big'", id="A27-str"),
])
def test_A27_importance_callable_errors_propagate(fn, error, match):
    model, pruner = cnn_pruner()
    pruner.set_importance_evaluation_function(fn)
    refused(model, lambda: pruner.prune(0.5), error, match)


def test_P12_activation_importance_with_zero_samples():
    model = small_cnn()
    pruner = PruneTorch(model, torch.randn(0, 3, 16, 16), align=8).set_importance_evaluation_function("activation")
    refused(model, lambda: pruner.prune(0.5), ValueError, "activation importance needs at least one sample")


def test_P11_l1_importance_with_zero_samples_still_works():
    model = small_cnn()
    PruneTorch(model, torch.randn(0, 3, 16, 16), align=8).prune(0.5)
    assert model[3].out_channels < 32 and runs(model, cnn_input())


# --------------------------------------------------------------------------------------- D: prune_model_weight
@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 4-layer tiny Llama (FFN 128) and its safetensors checkpoint."""
    model = llama(layers=4, seed=3)
    return model, save(model, tmp_path_factory.mktemp("big") / "big.safetensors")


def blocks_config(layer_map=None):
    return PruneConfig().set_steps(["prune_blocks"]).add_blocks_params(r"model\.layers\.(\d+)\.",
                                                                       layer_map or {0: 0, 1: 3})


def filled_from(small, big_model, layer_map=None):
    """Whether ``small`` holds the big model's weights under ``layer_map``."""
    big_state = big_model.state_dict()
    for key, value in small.state_dict().items():
        source = key
        for new, old in (layer_map or {0: 0, 1: 3}).items():
            if key.startswith(f"model.layers.{new}."):
                source = key.replace(f"model.layers.{new}.", f"model.layers.{old}.", 1)
        if not torch.equal(value, big_state[source]):
            return False
    return True


def test_D01_missing_keys_listed(big, tmp_path):
    big_model, _ = big
    state = {k: v for k, v in big_model.state_dict().items()
             if k not in ("model.layers.3.mlp.up_proj.weight", "model.norm.weight")}
    path = str(tmp_path / "partial.safetensors")
    save_state_dict(state, path)
    small = llama(seed=9)
    refused(small, lambda: prune_model_weight(small, blocks_config(), path), ValueError,
            "2 parameter\\(s\\) would stay uninitialised: model.layers.1.mlp.up_proj.weight, model.norm.weight. "
            "The model was not changed.")


def test_D02_shape_conflict_listed(big, tmp_path):
    big_model, _ = big
    state = dict(big_model.state_dict(), **{"model.norm.weight": torch.ones(48)})
    path = str(tmp_path / "conflict.safetensors")
    save_state_dict(state, path)
    small = llama(seed=9)
    refused(small, lambda: prune_model_weight(small, blocks_config(), path), ValueError,
            r"1 shape conflict\(s\) .*model.norm.weight: checkpoint \(48,\) vs model \(64,\)")


@pytest.mark.parametrize("name", [pytest.param("link.safetensors", id="D03-symlink"),
                                  pytest.param("big 4/my weights.safetensors", id="D04-space"),
                                  pytest.param("модель.safetensors", id="D04-T17-non-ascii")])
def test_D03_D04_any_existing_path_works(big, tmp_path, name):
    big_model, path = big
    target = tmp_path / name
    target.parent.mkdir(exist_ok=True)
    if name.startswith("link"):
        os.symlink(path, target)
    else:
        target.write_bytes(open(path, "rb").read())
    small = llama(seed=9)
    prune_model_weight(small, blocks_config(), str(target))
    assert filled_from(small, big_model)


@pytest.mark.parametrize("path, error, match", [
    pytest.param("", ValueError, "weight_file_path is an empty path", id="D04-empty"),
    pytest.param("a\0b.pt", ValueError, "weight_file_path 'a\\\\x00b.pt' contains a NUL byte", id="D04-nul"),
    pytest.param(None, TypeError, "weight_file_path must be str, not NoneType", id="D05-none"),
    pytest.param(b"x.pt", TypeError, "weight_file_path must be str, not bytes", id="D04-bytes"),
])
def test_D04_D05_bad_paths_name_the_argument(path, error, match):
    small = llama(seed=9)
    refused(small, lambda: prune_model_weight(small, blocks_config(), path), error, match)


def test_D04_path_checks_kept(big, tmp_path):
    _, path = big
    missing = str(tmp_path / "dir with space" / "absent.pt")
    with pytest.raises(ValueError, match="weight_file_path: the path .*dir with space/absent.pt doesn't exist"):
        check_input_path(missing)
    open_file = tmp_path / "open weights.safetensors"
    open_file.write_bytes(open(path, "rb").read())
    os.chmod(open_file, 0o664)
    with pytest.raises(ValueError, match="weight_file_path: the file .*open weights.safetensors is group writable"):
        check_input_path(str(open_file))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="weight_file_path: .*fifo is neither a regular file nor a directory"):
        check_input_path(str(fifo))
    assert check_input_path(str(tmp_path)) == os.path.realpath(tmp_path)


@pytest.mark.parametrize("call, error, match", [
    pytest.param(lambda s, p: prune_model_weight(s, {}, p), TypeError, "config must be PruneConfig, not dict",
                 id="D05-config"),
    pytest.param(lambda s, p: prune_model_weight(None, blocks_config(), p), ValueError, "The model can't be None!",
                 id="D05-model"),
    pytest.param(lambda s, p: blocks_config({True: 0}), TypeError, "layer_after must be int, not bool",
                 id="D05-layer-map"),
    pytest.param(lambda s, p: PruneConfig().set_importance("activation"), ValueError, "needs dataset",
                 id="D05-activation"),
])
def test_D05_bad_arguments(big, call, error, match):
    _, path = big
    small = llama(seed=9)
    refused(small, lambda: call(small, path), error, match)


def test_D06_negative_layer_id_lists_missing_keys(big):
    _, path = big
    small = llama(seed=9)
    refused(small, lambda: prune_model_weight(small, blocks_config({0: -1, 1: 3}), path), ValueError,
            "would stay uninitialised: model.layers.0.")


def test_D07_vit_step_without_qkv_keys_says_how_to_set_them(big):
    _, path = big
    small = llama(seed=9)
    config = PruneConfig().set_steps(["prune_vit_intra_block"])
    error = refused(small, lambda: prune_model_weight(small, config, path), ValueError, "qkv_keys")
    assert "set_qkv_keys(['qkv'])" in str(error) and "prune_vit_intra_block" in str(error)


def test_D08_wrapped_pt_checkpoint_works(big, tmp_path):
    big_model, _ = big
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": big_model.state_dict(), "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    small = llama(seed=9)
    prune_model_weight(small, blocks_config(), str(path))
    assert filled_from(small, big_model)


def test_D09_numpy_pickle_refused(big, tmp_path):
    big_model, _ = big
    path = tmp_path / "numpy.pt"
    torch.save({k: v.numpy() for k, v in big_model.state_dict().items()}, path)
    small = llama(seed=9)
    refused(small, lambda: prune_model_weight(small, blocks_config(), str(path)), UnsafeCheckpointError,
            "Code: 302")


def test_D10_shard_outside_the_folder_refused(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.norm.weight": "../../../../etc/passwd"}}))
    small = llama(seed=9)
    refused(small, lambda: prune_model_weight(small, blocks_config(), str(tmp_path / "model.safetensors.index.json")),
            CheckpointError, "passwd")


def test_D11_not_strict_loads_the_rest(big, tmp_path):
    big_model, _ = big
    state = {k: v for k, v in big_model.state_dict().items() if k != "model.norm.weight"}
    path = str(tmp_path / "partial.safetensors")
    save_state_dict(state, path)
    small = llama(seed=9)
    norm_before = small.model.norm.weight.clone()
    prune_model_weight(small, blocks_config().set_strict(False), path)
    assert torch.equal(small.model.norm.weight, norm_before)
    assert torch.equal(small.model.layers[1].mlp.up_proj.weight, big_model.model.layers[3].mlp.up_proj.weight)


@pytest.mark.parametrize("batch", [pytest.param("a string", id="D12-string"),
                                   pytest.param({"input_ids": torch.full((1, 8), 500)}, id="D12-vocab")])
def test_D12_bad_activation_batch_names_the_batch(big, batch):
    big_model, path = big
    small = llama(layers=4, seed=9, ffn=64)
    config = PruneConfig().set_steps(["prune_bert_intra_block"]).set_importance("activation", [batch],
                                                                                 model=big_model)
    refused(small, lambda: prune_model_weight(small, config, path), RuntimeError,
            r"dataset\[0\]: .*failed on this batch")


def test_P12_activation_importance_with_empty_batches(big):
    big_model, path = big
    small = llama(layers=4, seed=9, ffn=64)
    config = PruneConfig().set_steps(["prune_bert_intra_block"]).set_importance(
        "activation", [{"input_ids": torch.zeros((0, 8), dtype=torch.long)}], model=big_model)
    refused(small, lambda: prune_model_weight(small, config, path), ValueError,
            r"activation importance needs at least one sample: dataset\[0\] is empty")


def test_P12_auto_layer_map_with_empty_batches(big):
    big_model, path = big
    small = llama(seed=9)
    config = PruneConfig().set_steps(["prune_blocks"]).add_blocks_params(r"model\.layers\.(\d+)\.", "auto")
    config.set_importance("first", [torch.zeros((0, 8), dtype=torch.long)], model=big_model)
    refused(small, lambda: prune_model_weight(small, config, path), ValueError,
            r"layer_id_map='auto' needs at least one sample: dataset\[0\] is empty")


def test_D13_auto_layer_map_with_an_encoder_big_model(big):
    _, path = big
    bert = T.BertModel(T.BertConfig(vocab_size=VOCAB_BERT, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64)).eval()
    small = llama(seed=9)
    config = PruneConfig().set_steps(["prune_blocks"]).add_blocks_params(r"model\.layers\.(\d+)\.", "auto")
    config.set_importance("first", [{"input_ids": torch.randint(0, VOCAB_BERT, (1, 8))}], model=bert)
    refused(small, lambda: prune_model_weight(small, config, path), ValueError,
            r"matches none of the big model's blocks \(encoder.layer.0, encoder.layer.1\)")

