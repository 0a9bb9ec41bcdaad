"""Every described transformer family, on a tiny model: detection (config type first), PruneTorch's head and FFN
coupling, prune_model_weight's choice and slicing, the sparse stages, and the name-only layout of the MindSpore
backend agreeing with the PyTorch one."""
import copy

import pytest
import torch
import transformers as T
from safetensors.torch import save_model

from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
from msmodelslim.common.structure import families
from msmodelslim.common.structure.families import FAMILIES, OTHER, detect_family, module_names, stage_of
from msmodelslim.common.structure.layout import build_layout, named_axes, named_hidden_candidates
from msmodelslim.pytorch.prune import desc as desc_format
from msmodelslim.pytorch.prune.prune_torch import CallParams, PruneTorch
from msmodelslim.pytorch.prune.structure import StructureEngine, detect_family as detect_torch_family, head_size
from msmodelslim.pytorch.prune.transformer_prune.layout import build_layout as build_torch_layout
from tests.zoo.cnn import FusedViT

VOCAB = 96


def _ids():
    return {"input_ids": torch.randint(2, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))}


def _pixels():
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))}


def _bert():
    cfg = T.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=96, max_position_embeddings=32)
    return T.BertModel(cfg, add_pooling_layer=False), _ids()


def _vit():
    cfg = T.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                      image_size=32, patch_size=16)
    return T.ViTModel(cfg, add_pooling_layer=False), _pixels()


def _yolos():
    cfg = T.YolosConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                        image_size=[32, 32], patch_size=16, num_detection_tokens=2)
    return T.YolosModel(cfg, add_pooling_layer=False), _pixels()


def _gpt2():
    cfg = T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_inner=96, n_positions=32,
                       bos_token_id=0, eos_token_id=0)
    return T.GPT2LMHeadModel(cfg), _ids()


def _llama():
    cfg = T.LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                        num_key_value_heads=4, intermediate_size=96, max_position_embeddings=32)
    return T.LlamaForCausalLM(cfg), _ids()


def _phi3():
    cfg = T.Phi3Config(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                       num_key_value_heads=2, intermediate_size=96, max_position_embeddings=32, pad_token_id=0,
                       bos_token_id=1, eos_token_id=1)
    return T.Phi3ForCausalLM(cfg), _ids()


def _timm_vit():
    return FusedViT(image=32, patch=16, dim=64, depth=2, heads=4, mlp=96), (torch.randn(2, 3, 32, 32),)


def _opt():
    cfg = T.OPTConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=96,
                      word_embed_proj_dim=64, max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
                      pad_token_id=1)
    return T.OPTForCausalLM(cfg), _ids()


def _phi():
    cfg = T.PhiConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=4, intermediate_size=96, max_position_embeddings=32)
    return T.PhiForCausalLM(cfg), _ids()


def _starcoder2():
    cfg = T.Starcoder2Config(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                             num_key_value_heads=2, intermediate_size=96, max_position_embeddings=32)
    return T.Starcoder2ForCausalLM(cfg), _ids()


def _apertus():
    cfg = T.ApertusConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                          num_key_value_heads=4, intermediate_size=96, max_position_embeddings=32)
    return T.ApertusForCausalLM(cfg), _ids()


def _clip():
    cfg = T.CLIPVisionConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                             image_size=32, patch_size=16)
    return T.CLIPVisionModel(cfg), _pixels()


TINY_MODELS = {"apertus": _apertus, "clip": _clip, "bert": _bert, "vit": _vit, "vit_legacy": _yolos, "gpt2": _gpt2, "llama": _llama,
               "phi3": _phi3, "timm_vit": _timm_vit, "opt": _opt, "phi": _phi, "starcoder2": _starcoder2}
FAMILY = {family.name: family for family in FAMILIES}
REMOVED_HEAD_UNIT = 1  # not the first unit, so keeping "the first ones" would be caught
REMOVED_NEURONS = [1, 4, 7, 10]


def test_every_family_has_a_tiny_model():
    assert sorted(TINY_MODELS) == sorted(FAMILY)


def _model(name):
    torch.manual_seed(0)
    model, inputs = TINY_MODELS[name]()
    return model.eval(), inputs


def _call(model, inputs):
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _engine(model):
    family, layers = detect_torch_family(model)
    return StructureEngine(model, family, layers, prune_hidden=False)


def _remove(model, inputs, head_unit, neurons):
    """Prune ``head_unit`` and ``neurons`` out of every layer with PruneTorch, through a desc."""
    engine = _engine(model)
    removed = {}
    for g, group in enumerate(engine.groups):
        if group.kind == "heads":
            removed[g] = [head_unit]
        elif group.kind == "ffn":
            removed[g] = list(neurons)
    patches, fields, _ = engine.patches(removed)
    desc = desc_format.build_desc(model, engine.groups, removed, engine=engine.engine, patches=patches,
                                  config=fields)
    call = CallParams(**inputs) if isinstance(inputs, dict) else CallParams(*inputs)
    PruneTorch(model, call).prune_by_desc(desc)


def _unit_rows(group, units):
    """``{module name: (role, indices)}`` of ``units`` of a channel group."""
    return {m.target: (m.role, m.indices_of_units(units)) for m in group.members}


def _zero_units(model, head_unit, neurons, everywhere):
    """Zero the contribution of ``head_unit`` / ``neurons`` of every layer: their output-projection / down
    columns (``everywhere``: also their q, k, v and up/gate rows, so that weight importance finds them last)."""
    engine = _engine(model)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for group in engine.groups:
            units = [head_unit] if group.kind == "heads" else neurons if group.kind == "ffn" else None
            if units is None:
                continue
            for target, (role, idxs) in _unit_rows(group, units).items():
                if role == "input" or everywhere:
                    _zero(modules[target], role, idxs)


def _zero(module, role, idxs):
    weight_axis = {"output": 0, "input": 1}[role]
    if type(module).__name__ == "Conv1D":  # GPT-2 keeps [in, out]
        weight_axis = 1 - weight_axis
    module.weight.index_fill_(weight_axis, torch.tensor(idxs), 0.0)
    if role == "output" and getattr(module, "bias", None) is not None:
        module.bias.index_fill_(0, torch.tensor(idxs), 0.0)


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_the_family_is_detected_from_its_tiny_model(name):
    model, _ = _model(name)
    family, layers = detect_torch_family(model)
    assert family is FAMILY[name]
    assert len(layers) == 2


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_prunetorch_removes_exactly_the_heads_and_neurons_of_the_units(name):
    """Removing a head unit and some FFN neurons gives the dense model with their output columns zeroed: any
    misaligned row of q, k, v (or of a fused part, or of gate/up) would change the outputs."""
    dense, inputs = _model(name)
    reference = copy.deepcopy(dense)
    _zero_units(reference, REMOVED_HEAD_UNIT, REMOVED_NEURONS, everywhere=False)
    pruned = copy.deepcopy(dense)
    before = sum(p.numel() for p in pruned.parameters())
    _remove(pruned, inputs, REMOVED_HEAD_UNIT, REMOVED_NEURONS)
    assert sum(p.numel() for p in pruned.parameters()) < before
    torch.testing.assert_close(_call(pruned, inputs), _call(reference, inputs), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_prune_model_weight_keeps_the_important_units_and_slices_every_coupled_tensor_alike(name, tmp_path):
    """The checkpoint's head unit and FFN neurons with zero weights are the ones dropped, and the small model
    then computes exactly what the big one does."""
    big, inputs = _model(name)
    _zero_units(big, REMOVED_HEAD_UNIT, REMOVED_NEURONS, everywhere=True)
    path = str(tmp_path / "big.safetensors")
    save_model(big, path)
    small = copy.deepcopy(big)
    _remove(small, inputs, 0, range(len(REMOVED_NEURONS)))  # same sizes, the wrong units
    with torch.no_grad():
        for param in small.parameters():
            param.normal_()
    config = PruneConfig()
    config.set_steps(["prune_bert_intra_block"])
    config.set_importance("weight")
    prune_model_weight(small, config, path)
    torch.testing.assert_close(_call(small, inputs), _call(big, inputs), atol=2e-5, rtol=1e-4)
    for prefix, kept in config.report["heads"].items():
        assert kept and all(h not in kept for h in _removed_query_heads(big, prefix))


def _removed_query_heads(model, prefix):
    engine = _engine(model)
    group = next(g for g in engine.groups if g.name == f"{prefix}heads")
    per_unit = group.unit_channels // head_size(model, engine.family, prefix)
    return list(range(REMOVED_HEAD_UNIT * per_unit, (REMOVED_HEAD_UNIT + 1) * per_unit))


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_the_name_only_layout_of_the_mindspore_backend_matches_the_pytorch_one(name):
    """The layout a backend builds from parameter names and shapes alone (MindSpore) claims the same axes with the
    same views as the one built from PyTorch's layer kinds."""
    big, inputs = _model(name)
    small = copy.deepcopy(big)
    _remove(small, inputs, 0, range(len(REMOVED_NEURONS)))
    big_shapes = {k: tuple(v.shape) for k, v in big.state_dict().items()}
    small_shapes = {k: tuple(v.shape) for k, v in small.state_dict().items()}
    family, layers = detect_family(module_names(small_shapes))
    assert family is FAMILY[name] or name in ("vit", "vit_legacy")  # dinov2-like names are shared
    family, layers = detect_torch_family(small)
    torch_layout = build_torch_layout(small, family, layers, big_shapes.get)
    named_layout = build_layout(family, list(layers), small_shapes, big_shapes.get, named_axes(family, small_shapes),
                                lambda prefix: head_size(small, family, prefix),
                                named_hidden_candidates(family, small_shapes))

    def claims(layout):
        return {axis: (owner.group.name, owner.view) for axis, owner in layout.axes.items()
                if owner.view != "hidden"}

    assert claims(named_layout) == claims(torch_layout)
    assert [g.big for g in named_layout.heads] == [g.big for g in torch_layout.heads]
    assert [(g.big, g.small) for g in named_layout.ffn] == [(g.big, g.small) for g in torch_layout.ffn]


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_every_projection_of_the_family_has_its_sparse_stage(name):
    model, _ = _model(name)
    family, layers = detect_torch_family(model)
    for prefix in layers:
        for projection in family.projections():
            assert stage_of(prefix + projection) == family.stage_of(projection) != OTHER


@pytest.mark.parametrize("family,model_type", [(f, t) for f in FAMILIES for t in f.model_types])
def test_every_listed_config_type_builds_a_model_of_its_family(family, model_type):
    config = T.AutoConfig.for_model(model_type, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, vocab_size=VOCAB, pad_token_id=0)
    model = T.AutoModel.from_config(config)
    found, layers = detect_torch_family(model)
    assert found is family and layers


def test_the_config_type_decides_before_the_names():
    names = ["layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj",
             "layers.0.self_attn.o_proj", "layers.0.self_attn.out_proj", "layers.0.mlp.gate_proj",
             "layers.0.mlp.up_proj", "layers.0.mlp.down_proj", "layers.0.fc1", "layers.0.fc2"]
    assert detect_family(names)[0].name == "llama"  # the first that fits
    assert detect_family(names, "opt")[0].name == "opt"
    assert detect_family(names, "unknown-type")[0].name == "llama"
    assert detect_family(["encoder.block.0.x"]) == (None, {})


def test_fused_rows_are_not_assumed_to_be_thirds():
    """A fused qkv under grouped-query attention: 8 query heads and 2 key/value heads of 8 channels."""
    model, _ = _model("phi3")
    engine = _engine(model)
    heads = next(g for g in engine.groups if g.kind == "heads")
    rows = _unit_rows(heads, [1])["model.layers.0.self_attn.qkv_proj"][1]
    assert rows == [*range(32, 64), *range(64 + 8, 64 + 16), *range(80 + 8, 80 + 16)]
    ffn = next(g for g in engine.groups if g.kind == "ffn")
    assert _unit_rows(ffn, [3])["model.layers.0.mlp.gate_up_proj"][1] == [3, 96 + 3]


def test_the_sparse_stages_come_from_the_family_description():
    from msmodelslim.pytorch.sparse.sparse_tools import stages

    assert stages.stage_of is families.stage_of
    assert stage_of("encoder.layer.0.attention.output.dense") == families.ATTENTION_OUTPUT
    assert stage_of("encoder.layer.0.output.dense") == families.MLP
    assert stage_of("model.layers.0.mlp.gate_up_proj") == families.MLP
    assert stage_of("classifier") == OTHER
