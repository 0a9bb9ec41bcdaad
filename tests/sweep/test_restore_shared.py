"""Restores are exact with shared parameters (issue 11, item 2) for PruneTorch and prune_model_weight.

Models with tied or shared parameters (a tied Llama, GPT-2, one module used twice) are made to fail midway - an
invalid last desc entry, a forward that raises (or is interrupted) in the post-prune check, a desc that would
untie a shared tensor, a checkpoint with a shape conflict, a load that fails half-way - and must come back with
every tensor equal, the same Parameter objects, and the tie intact."""
import copy

import pytest
import torch
from torch import nn

from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
from msmodelslim.pytorch.prune.prune_torch import CallParams, PruneTorch
from msmodelslim.utils.checkpoint import save_state_dict
from sweep.prune_sweep_support import Snapshot, gpt2, llama, runs, save, token_ids


def tied_llama(**kwargs):
    model = llama(tie=True, **kwargs)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def llama_tie(model):
    return model.lm_head.weight is model.model.embed_tokens.weight


def gpt2_tie(model):
    return model.lm_head.weight is model.transformer.wte.weight


class Twice(nn.Module):
    """One Linear called twice per forward, and one registered under two names."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(16, 32)
        self.mid = nn.Linear(32, 32)
        self.alias = self.inp
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(torch.relu(self.mid(torch.relu(self.mid(h)))))


def arm_failure(module, error):
    """Deliberate fault injection: ``module`` raises ``error`` from its next forward once armed (returned list)."""
    armed = []

    def hook(mod, inputs, output):
        if armed:
            raise error

    module.register_forward_hook(hook)
    return armed


@pytest.fixture(scope="module")
def tied_desc():
    """A desc PruneTorch plans for the tied Llama (it prunes the hidden size: embedding and lm_head together)."""
    return PruneTorch(tied_llama(), CallParams(input_ids=token_ids())).analysis(0.5)[1]


# ---------------------------------------------------------------------------------------------- PruneTorch
def test_tied_llama_prune_by_desc_keeps_the_tie(tied_desc):
    model = tied_llama()
    PruneTorch(model, CallParams(input_ids=token_ids())).prune_by_desc(copy.deepcopy(tied_desc))
    assert llama_tie(model) and model.lm_head.weight.shape[1] < 64
    assert runs(model, {"input_ids": token_ids()})


def test_tied_llama_invalid_last_entry_restores(tied_desc):
    model = tied_llama()
    desc = copy.deepcopy(tied_desc)
    desc["model.layers.9.mlp.up_proj"] = {"output": [1, "-"]}  # the last entry is invalid
    snapshot = Snapshot(model)
    with pytest.raises(ValueError, match="Module 'model.layers.9.mlp.up_proj'"):
        PruneTorch(model, CallParams(input_ids=token_ids())).prune_by_desc(desc)
    snapshot.assert_identical()
    assert llama_tie(model)


@pytest.mark.parametrize("error, raised", [(RuntimeError("boom"), ValueError),
                                           (KeyboardInterrupt(), KeyboardInterrupt)])
def test_tied_llama_failing_post_prune_forward_restores(tied_desc, error, raised):
    model = tied_llama()
    pruner = PruneTorch(model, CallParams(input_ids=token_ids()))
    armed = arm_failure(model.model.norm, error)
    snapshot = Snapshot(model)
    armed.append(True)
    with pytest.raises(raised):
        pruner.prune_by_desc(copy.deepcopy(tied_desc))
    armed.clear()
    snapshot.assert_identical()
    assert llama_tie(model) and runs(model, {"input_ids": token_ids()})


@pytest.mark.parametrize("change", ["other-mask", "drop-lm_head"])
def test_a_desc_that_would_untie_is_refused(tied_desc, change):
    model = tied_llama()
    desc = copy.deepcopy(tied_desc)
    kept, mask = desc["lm_head"]["input"]
    if change == "other-mask":
        desc["lm_head"]["input"] = [kept, mask[::-1]]
    else:
        del desc["lm_head"]
    snapshot = Snapshot(model)
    with pytest.raises(ValueError, match="'lm_head.weight'.* share one tensor"):
        PruneTorch(model, CallParams(input_ids=token_ids())).prune_by_desc(desc)
    snapshot.assert_identical()
    assert llama_tie(model)


def test_gpt2_prune_with_failing_check_restores_and_success_keeps_the_tie():
    model = gpt2()
    pruner = PruneTorch(model, CallParams(input_ids=token_ids()))
    armed = arm_failure(model.transformer.ln_f, RuntimeError("boom"))
    snapshot = Snapshot(model)
    armed.append(True)
    with pytest.raises(ValueError, match="fails to run .*boom"):
        pruner.prune(0.5)
    armed.clear()
    snapshot.assert_identical()
    assert gpt2_tie(model)
    pruner.prune(0.5)
    assert gpt2_tie(model) and model.lm_head.weight.shape[1] < 64 and runs(model, {"input_ids": token_ids()})


def test_module_used_twice_and_aliased_restores_on_failure():
    model = Twice().eval()
    x = torch.randn(2, 16)
    pruner = PruneTorch(model, x, align=8)
    assert pruner.groups  # traced before the fault is armed
    armed = arm_failure(model.out, RuntimeError("boom"))
    snapshot = Snapshot(model)
    armed.append(True)
    with pytest.raises(ValueError, match="fails to run"):
        pruner.prune(0.5)
    armed.clear()
    snapshot.assert_identical()
    assert model.alias is model.inp
    pruner.prune(0.5)
    # called twice per forward: pruned with the neighbours of both calls
    assert model.mid.in_features == model.mid.out_features == model.inp.out_features < 32
    assert model.alias is model.inp and runs(model, x)


# ---------------------------------------------------------------------------------------------- prune_model_weight
@pytest.fixture(scope="module")
def tied_checkpoint(tmp_path_factory):
    """A 4-layer tied Llama and its safetensors checkpoint (both tied keys stored, equal)."""
    big = llama(layers=4, tie=True, seed=3)
    return big, save(big, tmp_path_factory.mktemp("tied") / "big.safetensors")


def blocks_config():
    return PruneConfig().set_steps(["prune_blocks"]).add_blocks_params(r"model\.layers\.(\d+)\.", {0: 0, 1: 3})


def test_prune_model_weight_fills_a_tied_model_and_keeps_the_tie(tied_checkpoint):
    big, path = tied_checkpoint
    small = tied_llama(seed=9)
    objects = dict(small.named_parameters())
    prune_model_weight(small, blocks_config(), path)
    assert llama_tie(small) and torch.equal(small.lm_head.weight, big.lm_head.weight)
    assert all(objects[k] is v for k, v in small.named_parameters())


def test_prune_model_weight_shape_conflict_restores_tied_model(tied_checkpoint, tmp_path):
    big, _ = tied_checkpoint
    path = str(tmp_path / "conflict.safetensors")
    save_state_dict(dict(big.state_dict(), **{"model.norm.weight": torch.ones(48)}), path)
    small = tied_llama(seed=9)
    snapshot = Snapshot(small)
    with pytest.raises(ValueError, match="shape conflict"):
        prune_model_weight(small, blocks_config(), path)
    snapshot.assert_identical()
    assert llama_tie(small)


@pytest.mark.parametrize("error", [RuntimeError("disk gone"), KeyboardInterrupt()])
def test_prune_model_weight_failing_half_way_through_the_load_restores(tied_checkpoint, error):
    _, path = tied_checkpoint
    small = tied_llama(seed=9)

    def fail(*args, **kwargs):
        raise error  # deliberate fault injection: the embedding and layers are loaded, the final norm fails

    small.model.norm.register_load_state_dict_pre_hook(fail)
    snapshot = Snapshot(small)
    with pytest.raises(type(error)):
        prune_model_weight(small, blocks_config(), path)
    snapshot.assert_identical()
    assert llama_tie(small)


def test_prune_model_weight_untied_checkpoint_into_tied_model(tied_checkpoint, tmp_path):
    big, _ = tied_checkpoint
    state = {k: v.clone() for k, v in big.state_dict().items()}
    state["lm_head.weight"] = torch.randn_like(state["lm_head.weight"])
    path = str(tmp_path / "untied.safetensors")
    save_state_dict(state, path)
    small = tied_llama(seed=9)
    snapshot = Snapshot(small)
    with pytest.raises(ValueError, match="different values for 'model.embed_tokens.weight' and 'lm_head.weight'"):
        prune_model_weight(small, blocks_config(), path)
    snapshot.assert_identical()
    prune_model_weight(small, blocks_config().set_strict(False), path)
    assert llama_tie(small) and torch.equal(small.lm_head.weight, state["model.embed_tokens.weight"])
