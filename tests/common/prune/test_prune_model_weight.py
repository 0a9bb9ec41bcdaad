"""prune_model_weight on tiny random models with real checkpoints on disk: the documented call, the original's
first-N slicing bit for bit, importance that keeps coupled tensors consistent, validation, and nothing half-done."""
import json
import os
import re

import pytest
import torch
import transformers as T
from safetensors.torch import save_file

from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
from msmodelslim.errors import CheckpointError, UnsafeCheckpointError
from msmodelslim.utils.checkpoint import save_state_dict
from zoo.cnn import FusedViT


def bert_config(**overrides):
    values = dict(vocab_size=200, hidden_size=64, num_hidden_layers=12, num_attention_heads=4,
                  intermediate_size=256, max_position_embeddings=64)
    values.update(overrides)
    return T.BertConfig(**values)


@pytest.fixture
def big_bert(tmp_path):
    torch.manual_seed(0)
    model = T.BertForQuestionAnswering(bert_config()).eval()
    path = tmp_path / "bert_large.pt"
    torch.save(model.state_dict(), path)
    (tmp_path / "bert_config.json").write_text(json.dumps(bert_config(num_hidden_layers=7,
                                                                      intermediate_size=128).to_dict()))
    return model, str(path), str(tmp_path / "bert_config.json")


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, saved):
    return all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_seed_document_example(big_bert):
    big, weight_file, bert_config_file = big_bert
    modeling = T  # the ModelZoo `modeling` module of the document, here Hugging Face transformers
    from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig
    from msmodelslim.common.prune.transformer_prune.prune_model import prune_model_weight
    from msmodelslim import set_logger_level
    set_logger_level("info")        #根据实际情况配置
    prune_config = PruneConfig()
    prune_config.set_steps(['prune_blocks', 'prune_bert_intra_block']). \
        add_blocks_params(pattern="bert.encoder.layer.(\d+).",layer_id_map={0: 0, 1: 2, 2: 4, 3: 6, 4: 8, 5: 10, 6: 11})  # noqa: W605
    bert_config = modeling.BertConfig.from_json_file(bert_config_file) # 载入bert配置，初始化较小的模型。
    bert_model = modeling.BertForQuestionAnswering(bert_config) # 实例化bert模型
    prune_model_weight(bert_model, prune_config, weight_file_path = weight_file)   # noqa: E251

    # the original's semantics, bit for bit: small layer i <- checkpoint layer map[i], first rows/columns
    sources = {0: 0, 1: 2, 2: 4, 3: 6, 4: 8, 5: 10, 6: 11}
    for small_id, big_id in sources.items():
        small_layer, big_layer = bert_model.bert.encoder.layer[small_id], big.bert.encoder.layer[big_id]
        assert torch.equal(small_layer.attention.self.query.weight, big_layer.attention.self.query.weight)
        assert torch.equal(small_layer.intermediate.dense.weight, big_layer.intermediate.dense.weight[:128])
        assert torch.equal(small_layer.intermediate.dense.bias, big_layer.intermediate.dense.bias[:128])
        assert torch.equal(small_layer.output.dense.weight, big_layer.output.dense.weight[:, :128])
    assert torch.equal(bert_model.qa_outputs.weight, big.qa_outputs.weight)
    assert prune_config.report["layers"] == sources


def test_reversed_steps_fail_cleanly(big_bert):
    _, weight_file, _ = big_bert
    small = T.BertForQuestionAnswering(bert_config(num_hidden_layers=7, intermediate_size=128))
    saved = snapshot(small)
    config = PruneConfig().set_steps(["prune_bert_intra_block", "prune_blocks"]).add_blocks_params(
        r"bert\.encoder\.layer\.(\d+)\.", {i: 2 * i for i in range(6)} | {6: 11})
    with pytest.raises(ValueError, match="shape conflict") as info:
        prune_model_weight(small, config, weight_file)
    assert "bert.encoder.layer.4.intermediate.dense.weight: checkpoint (256, 64) vs model (128, 64)" in str(info.value)
    assert unchanged(small, saved)


def test_two_small_layers_from_one_checkpoint_layer(big_bert):
    big, weight_file, _ = big_bert
    small = T.BertForQuestionAnswering(bert_config(num_hidden_layers=3))
    config = PruneConfig().set_steps(["prune_blocks"]).add_blocks_params(r"bert\.encoder\.layer\.(\d+)\.",
                                                                        {0: 5, 1: 5, 2: 11})
    prune_model_weight(small, config, weight_file)
    for i, j in ((0, 5), (1, 5), (2, 11)):
        assert torch.equal(small.bert.encoder.layer[i].output.dense.weight, big.bert.encoder.layer[j].output.dense.weight)


def test_missing_layer_lists_uninitialised_keys_and_leaves_model_untouched(big_bert, caplog):
    _, weight_file, _ = big_bert
    small = T.BertForQuestionAnswering(bert_config(num_hidden_layers=3))
    saved = snapshot(small)
    config = PruneConfig().set_steps(["prune_blocks"]).add_blocks_params(r"bert\.encoder\.layer\.(\d+)\.",
                                                                        {0: 0, 1: 1, 2: 99})
    with pytest.raises(ValueError, match="would stay uninitialised") as info:
        prune_model_weight(small, config, weight_file)
    assert "bert.encoder.layer.2.attention.self.query.weight" in str(info.value)
    assert unchanged(small, saved)
    config.set_strict(False)
    prune_model_weight(small, config, weight_file)  # loads what it can, the rest keeps its values
    assert torch.equal(small.bert.encoder.layer[2].output.dense.weight, saved["bert.encoder.layer.2.output.dense.weight"])
    assert not torch.equal(small.bert.encoder.layer[0].output.dense.weight,
                           saved["bert.encoder.layer.0.output.dense.weight"])


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "hf_dir"])
def test_checkpoint_formats(tmp_path, layout):
    torch.manual_seed(0)
    big = T.BertModel(bert_config(num_hidden_layers=4), add_pooling_layer=False)
    if layout == "safetensors":
        path = tmp_path / "model.safetensors"
        save_state_dict(big.state_dict(), path)
    elif layout == "sharded":
        keys = list(big.state_dict())
        half = len(keys) // 2
        weight_map = {}
        for i, part in enumerate((keys[:half], keys[half:])):
            name = f"model-{i + 1:05d}-of-00002.safetensors"
            save_file({k: big.state_dict()[k].contiguous() for k in part}, tmp_path / name)
            weight_map.update({k: name for k in part})
        path = tmp_path / "model.safetensors.index.json"
        path.write_text(json.dumps({"weight_map": weight_map}))
    else:
        big.save_pretrained(tmp_path)
        path = tmp_path
    small = T.BertModel(bert_config(num_hidden_layers=2, intermediate_size=128), add_pooling_layer=False)
    config = PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"]).add_blocks_params(
        r"encoder\.layer\.(\d+)\.", {0: 1, 1: 3}).set_importance("weight")
    prune_model_weight(small, config, str(path))
    kept = config.report["ffn"]["encoder.layer.1."]
    assert kept == [128, 256]
    assert torch.equal(small.embeddings.word_embeddings.weight, big.embeddings.word_embeddings.weight)


# ------------------------------------------------------------------------------------------------ importance
def _dead_heads_bert(model, layer, heads, head_dim):
    attention = model.encoder.layer[layer].attention
    with torch.no_grad():
        for h in heads:
            rows = slice(h * head_dim, (h + 1) * head_dim)
            attention.self.value.weight[rows] = 0
            attention.self.value.bias[rows] = 0
            attention.output.dense.weight[:, rows] = 0


def test_importance_drops_dead_heads_and_neurons_and_keeps_outputs(tmp_path):
    """Heads whose value and output slices are zero, and FFN neurons whose down columns are zero, contribute
    nothing: importance must drop exactly them, slicing q, k, v, o (and up, down) with the same indices, so the
    small model computes exactly what the big one does."""
    torch.manual_seed(0)
    big = T.BertModel(bert_config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4), add_pooling_layer=False)
    big.eval()
    for layer in range(2):
        _dead_heads_bert(big, layer, heads=[0, 2], head_dim=16)
        with torch.no_grad():
            big.encoder.layer[layer].output.dense.weight[:, 100:228] = 0  # 128 dead FFN neurons
    path = tmp_path / "big.safetensors"
    save_state_dict(big.state_dict(), path)
    small = _bert_with_heads(heads=2, head_dim=16, intermediate=128)  # heads keep their size, 16
    config = PruneConfig().set_steps(["prune_bert_intra_block"]).set_importance("weight")
    prune_model_weight(small, config, str(path))
    assert config.report["heads"]["encoder.layer.0."] == [1, 3]
    ids = torch.randint(0, 200, (2, 12))
    with torch.no_grad():
        assert torch.allclose(small(input_ids=ids).last_hidden_state, big(input_ids=ids).last_hidden_state, atol=1e-5)


def _bert_with_heads(heads, head_dim, intermediate):
    """A BertModel with hidden 64 whose attention has ``heads`` heads of ``head_dim`` (inner width != hidden)."""
    model = T.BertModel(bert_config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                    intermediate_size=intermediate), add_pooling_layer=False).eval()
    width = heads * head_dim
    for layer in model.encoder.layer:
        attention = layer.attention.self
        for name in ("query", "key", "value"):
            setattr(attention, name, torch.nn.Linear(64, width))
        attention.num_attention_heads, attention.all_head_size = heads, width
        layer.attention.output.dense = torch.nn.Linear(width, 64)
    return model


def test_llama_gqa_keeps_whole_key_value_groups(tmp_path):
    torch.manual_seed(0)
    cfg = dict(vocab_size=128, hidden_size=64, num_hidden_layers=1, num_attention_heads=8, num_key_value_heads=4,
               intermediate_size=128, head_dim=8)
    big = T.LlamaForCausalLM(T.LlamaConfig(**cfg)).eval()
    attention = big.model.layers[0].self_attn
    with torch.no_grad():  # key/value groups 1 and 2 (query heads 2-5) contribute nothing
        attention.v_proj.weight[8:24] = 0
        attention.o_proj.weight[:, 16:48] = 0
    path = tmp_path / "llama.safetensors"
    save_state_dict(big.state_dict(), path)
    small = T.LlamaForCausalLM(T.LlamaConfig(**{**cfg, "num_attention_heads": 4, "num_key_value_heads": 2})).eval()
    config = PruneConfig().set_steps(["prune_bert_intra_block"]).set_importance("weight")
    prune_model_weight(small, config, str(path))
    assert config.report["heads"]["model.layers.0."] == [0, 1, 6, 7]
    small_attn = small.model.layers[0].self_attn
    assert torch.equal(small_attn.k_proj.weight, torch.cat([attention.k_proj.weight[0:8], attention.k_proj.weight[24:32]]))
    ids = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        assert torch.allclose(small(input_ids=ids).logits, big(input_ids=ids).logits, atol=1e-5)


def test_gpt2_fused_qkv_by_thirds(tmp_path):
    torch.manual_seed(0)
    cfg = dict(vocab_size=128, n_embd=64, n_layer=1, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0)
    big = T.GPT2LMHeadModel(T.GPT2Config(**cfg)).eval()
    attn = big.transformer.h[0].attn
    with torch.no_grad():  # heads 1 and 2 (columns 16-47 of each third) contribute nothing
        attn.c_attn.weight[:, 128 + 16:128 + 48] = 0
        attn.c_attn.bias[128 + 16:128 + 48] = 0
        attn.c_proj.weight[16:48] = 0
    path = tmp_path / "gpt2.safetensors"
    save_state_dict(big.state_dict(), path)
    small = T.GPT2LMHeadModel(T.GPT2Config(**cfg)).eval()
    block = small.transformer.h[0].attn
    block.c_attn = type(block.c_attn)(96, 64)
    block.c_proj = type(block.c_proj)(64, 32)
    block.num_heads, block.split_size = 2, 32
    config = PruneConfig().set_steps(["prune_bert_intra_block"]).set_importance("weight")
    prune_model_weight(small, config, str(path))
    assert config.report["heads"]["transformer.h.0."] == [0, 3]
    ids = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        assert torch.allclose(small(input_ids=ids).logits, big(input_ids=ids).logits, atol=1e-5)


def test_opt_and_vit_prune_by_weight(tmp_path):
    torch.manual_seed(0)
    for big, small, inputs in (
        (T.OPTForCausalLM(T.OPTConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      ffn_dim=256, word_embed_proj_dim=64, max_position_embeddings=32)),
         T.OPTForCausalLM(T.OPTConfig(vocab_size=128, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                      ffn_dim=128, word_embed_proj_dim=48, max_position_embeddings=32)),
         {"input_ids": torch.randint(2, 128, (2, 8))}),
        (T.ViTForImageClassification(T.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                 intermediate_size=256, image_size=32, patch_size=8, num_labels=3)),
         T.ViTForImageClassification(T.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                                 intermediate_size=128, image_size=32, patch_size=8, num_labels=3)),
         {"pixel_values": torch.randn(2, 3, 32, 32)}),
    ):
        path = tmp_path / f"{type(big).__name__}.safetensors"
        save_state_dict(big.state_dict(), path)
        config = PruneConfig().set_steps(["prune_bert_intra_block"]).set_importance("weight")
        prune_model_weight(small.eval(), config, str(path))
        assert config.report["hidden"] == [48, 64]
        with torch.no_grad():
            assert torch.isfinite(small(**inputs).logits).all()


def test_fused_qkv_vit_step_first_and_importance(tmp_path):
    torch.manual_seed(0)
    big = FusedViT(dim=96, heads=6, mlp=192).eval()
    path = tmp_path / "vit.pth"
    torch.save(big.state_dict(), path)
    small = FusedViT(dim=96, heads=6, mlp=96).eval()
    for block in small.blocks:  # 3 heads of 16 in a 96-wide stream
        block.attn.qkv = torch.nn.Linear(96, 144)
        block.attn.proj = torch.nn.Linear(48, 96)
        block.attn.num_heads = 3
    config = PruneConfig().set_steps(["prune_vit_intra_block"])
    with pytest.raises(ValueError, match="config_name not in PruneConfig."):
        prune_model_weight(small, config, str(path))
    config.set_qkv_keys(["qkv"])
    prune_model_weight(small, config, str(path))
    keep = [j for i in range(3) for j in range(int(i * 288 / 3), int(i * 288 / 3 + 144 / 3))]
    assert torch.equal(small.blocks[0].attn.qkv.weight, big.blocks[0].attn.qkv.weight[keep])
    config.set_importance("weight")
    prune_model_weight(small, config, str(path))
    heads = config.report["heads"]["blocks.0."]
    channels = [h * 16 + c for h in heads for c in range(16)]
    q_rows = small.blocks[0].attn.qkv.weight[:48]
    assert torch.equal(q_rows, big.blocks[0].attn.qkv.weight[channels])
    assert torch.equal(small.blocks[0].attn.proj.weight, big.blocks[0].attn.proj.weight[:, channels])
    assert torch.isfinite(small(torch.randn(1, 3, 32, 32))).all()


# ------------------------------------------------------------------------------------------------ validation
def test_prune_config_validation():
    config = PruneConfig()
    for bad in (None, []):
        with pytest.raises(ValueError, match="Steps can not be empty!"):
            config.set_steps(bad)
    with pytest.raises(TypeError, match="steps must be list, not tuple."):
        config.set_steps(("prune_blocks",))
    with pytest.raises(ValueError, match="Element in steps is invalid. Should be all str."):
        config.set_steps(["prune_blocks", 1])
    assert config.set_steps(["unknown_step"]) is config  # names are checked by prune_model_weight
    with pytest.raises(TypeError, match="pattern must be str"):
        config.add_blocks_params(3, {0: 0})
    with pytest.raises(ValueError, match="exactly one capture group"):
        config.add_blocks_params(r"layer\.\d+\.", {0: 0})
    with pytest.raises(ValueError, match="exactly one capture group"):
        config.add_blocks_params(r"(layer)\.(\d+)\.", {0: 0})
    with pytest.raises(TypeError, match="layer_id_map must be dict, not list."):
        config.add_blocks_params(r"layer\.(\d+)\.", [0])
    with pytest.raises(TypeError, match="layer_id_map must be dict, not str."):
        config.add_blocks_params(r"layer\.(\d+)\.", "all")
    with pytest.raises(TypeError, match="layer_after must be int, not str."):
        config.add_blocks_params(r"layer\.(\d+)\.", {"0": 0})
    with pytest.raises(TypeError, match="layer_before must be int, not bool."):
        config.add_blocks_params(r"layer\.(\d+)\.", {0: True})
    assert config.get("prune_state_dict_steps") == ["unknown_step"]
    assert config.get("qkv_keys", ["qkv"]) == ["qkv"]
    with pytest.raises(ValueError, match="config_name not in PruneConfig."):
        config.get("qkv_keys")
    with pytest.raises(ValueError, match="importance must be one of"):
        config.set_importance("magnitude")
    with pytest.raises(ValueError, match="needs dataset"):
        config.set_importance("activation")
    with pytest.raises(ValueError, match="non-empty list"):
        config.set_importance("weight", [])
    with pytest.raises(TypeError, match="qkv_keys must be a list of str"):
        config.set_qkv_keys("qkv")


def test_prune_model_weight_validation(big_bert, tmp_path):
    _, weight_file, _ = big_bert
    small = T.BertForQuestionAnswering(bert_config(num_hidden_layers=2))
    config = PruneConfig().set_steps(["prune_blocks"])
    with pytest.raises(ValueError, match="The model can't be None!"):
        prune_model_weight(None, config, weight_file)
    with pytest.raises(ValueError, match="The model must be a MindSpore or PyTorch model"):
        prune_model_weight("bert", config, weight_file)
    with pytest.raises(TypeError, match="config must be PruneConfig, not dict."):
        prune_model_weight(small, {}, weight_file)
    with pytest.raises(ValueError, match=re.escape("Step foo not exist! Step must in")):
        prune_model_weight(small, PruneConfig().set_steps(["foo"]), weight_file)
    # any characters are accepted (no shell is involved): a missing path with a space is reported as missing
    with pytest.raises(ValueError, match="weight_file_path: the path .*my weights.pt doesn't exist"):
        prune_model_weight(small, config, str(tmp_path / "my weights.pt"))
    with pytest.raises(ValueError, match="doesn't exist"):
        prune_model_weight(small, config, str(tmp_path / "absent.pt"))
    writable = tmp_path / "open.pt"
    writable.write_bytes(open(weight_file, "rb").read())
    os.chmod(writable, 0o666)
    with pytest.raises(ValueError, match="group writable, or is others writable"):
        prune_model_weight(small, config, str(writable))


def test_corrupt_and_malicious_checkpoints_are_refused(big_bert, tmp_path):
    _, weight_file, _ = big_bert
    small = T.BertForQuestionAnswering(bert_config(num_hidden_layers=2))
    saved = snapshot(small)
    config = PruneConfig().set_steps(["prune_blocks"]).add_blocks_params(r"bert\.encoder\.layer\.(\d+)\.", {0: 0, 1: 1})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(weight_file, "rb").read()[:5000])
    with pytest.raises(CheckpointError):
        prune_model_weight(small, config, str(truncated))

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"bert.embeddings.word_embeddings.weight": torch.zeros(2), "x": Payload()}, evil)
    with pytest.raises(UnsafeCheckpointError):
        prune_model_weight(small, config, str(evil))
    assert not marker.exists()
    assert unchanged(small, saved)


def test_activation_needs_the_big_model(big_bert):
    _, weight_file, _ = big_bert
    small = T.BertForQuestionAnswering(bert_config(num_hidden_layers=12, intermediate_size=128))
    config = PruneConfig().set_steps(["prune_bert_intra_block"]).set_importance(
        "activation", [{"input_ids": torch.randint(0, 200, (2, 8))}])
    with pytest.raises(ValueError, match="need the big model"):
        prune_model_weight(small, config, weight_file)


def identity_blocks_llama(layers, identity):
    """A tiny random Llama whose ``identity`` layers add nothing to the residual stream (zero output projections)."""
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64)
    model = T.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for index in identity:
            model.model.layers[index].self_attn.o_proj.weight.zero_()
            model.model.layers[index].mlp.down_proj.weight.zero_()
    return model


def test_auto_layer_map_keeps_the_layers_that_change_the_hidden_states(tmp_path):
    big = identity_blocks_llama(6, identity=(1, 2, 4))
    path = tmp_path / "big.safetensors"
    save_state_dict(big.state_dict(), path)
    small = T.LlamaForCausalLM(T.LlamaConfig(**{**big.config.to_dict(), "num_hidden_layers": 3}))
    calibration = [torch.randint(0, 128, (2, 16)) for _ in range(2)]
    config = (PruneConfig().set_steps(["prune_blocks"]).add_blocks_params(r"model\.layers\.(\d+)\.", "auto")
              .set_importance("first", calibration, model=big))
    prune_model_weight(small, config, str(path))
    assert config.report["layers"] == {0: 0, 1: 3, 2: 5}
    assert config.prune_blocks_params[0]["layer_id_map"] == "auto"  # the config is reusable as given
    for small_id, big_id in config.report["layers"].items():
        assert torch.equal(small.model.layers[small_id].mlp.up_proj.weight, big.model.layers[big_id].mlp.up_proj.weight)
    # dropping blocks that do nothing leaves the function unchanged
    ids = calibration[0]
    assert torch.allclose(small(input_ids=ids).logits, big(input_ids=ids).logits, atol=1e-5)


def test_auto_layer_map_refuses_missing_calibration_and_foreign_patterns(tmp_path):
    big = identity_blocks_llama(4, identity=())
    path = tmp_path / "big.safetensors"
    save_state_dict(big.state_dict(), path)
    small = T.LlamaForCausalLM(T.LlamaConfig(**{**big.config.to_dict(), "num_hidden_layers": 2}))
    before = snapshot(small)
    config = PruneConfig().set_steps(["prune_blocks"]).add_blocks_params(r"model\.layers\.(\d+)\.", "auto")
    with pytest.raises(ValueError, match="needs calibration data"):
        prune_model_weight(small, config, str(path))
    config = (PruneConfig().set_steps(["prune_blocks"]).add_blocks_params(r"encoder\.layer\.(\d+)\.", "auto")
              .set_importance("first", [torch.randint(0, 128, (1, 8))], model=big))
    with pytest.raises(ValueError, match="matches no parameter of the small model"):
        prune_model_weight(small, config, str(path))
    deeper = T.LlamaForCausalLM(T.LlamaConfig(**{**big.config.to_dict(), "num_hidden_layers": 5}))
    config = (PruneConfig().set_steps(["prune_blocks"]).add_blocks_params(r"model\.layers\.(\d+)\.", "auto")
              .set_importance("first", [torch.randint(0, 128, (1, 8))], model=big))
    with pytest.raises(ValueError, match="the big model only 4"):
        prune_model_weight(deeper, config, str(path))
    assert unchanged(small, before)


# Where the hidden channels, heads and FFN neurons live in OPT and ViT (transformers 5 names both alike): tensors
# reading the residual stream (its channels are their columns), writing it (rows and bias entries) or holding it
# (last axis); per-head projections (rows) and the attention output (columns); the FFN's two layers.
PLACES = dict(reads=r"((q|k|v)_proj|fc1|classifier)\.weight$", writes=r"((out|o)_proj|fc2|patch_embeddings\.projection)\.",
              holds=r"layer_?norm|embed_tokens|embed_positions|cls_token|position_embeddings",
              heads=r"(q|k|v)_proj\.", head_out=r"(out|o)_proj\.weight$", ffn_in=r"fc1\.", ffn_out=r"fc2\.weight$")


def _plant(model, hidden=(), head=None, head_dim=16, neurons=()):
    """Zero the given hidden channels, one head per layer and the given FFN neurons in every tensor holding them."""
    hidden, neurons = list(hidden), list(neurons)
    head_rows = list(range(head * head_dim, (head + 1) * head_dim)) if head is not None else []
    with torch.no_grad():
        for name, param in model.named_parameters():
            def at(place):
                return re.search(PLACES[place], name)
            if hidden and at("reads"):
                param[:, hidden] = 0
            if hidden and at("writes"):
                param[hidden] = 0
            if hidden and at("holds"):
                param[..., hidden] = 0
            if head_rows and at("heads"):
                param[head_rows] = 0
            if head_rows and at("head_out"):
                param[:, head_rows] = 0
            if neurons and at("ffn_in"):
                param[neurons] = 0
            if neurons and at("ffn_out"):
                param[:, neurons] = 0


def _opt(hidden, heads, ffn):
    return T.OPTForCausalLM(T.OPTConfig(vocab_size=128, hidden_size=hidden, num_hidden_layers=2, ffn_dim=ffn,
                                        num_attention_heads=heads, word_embed_proj_dim=hidden,
                                        max_position_embeddings=32)).eval()


def _vit(hidden, heads, ffn):
    return T.ViTForImageClassification(T.ViTConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                                                   intermediate_size=ffn, image_size=32, patch_size=8,
                                                   num_labels=3)).eval()


MODELS = {"opt": (_opt, lambda m: m.model.decoder.embed_tokens.weight, lambda m, i: m.model.decoder.layers[i].fc1,
                  "model.decoder.layers.{}.", lambda: {"input_ids": torch.randint(2, 128, (2, 8))}),
          "vit": (_vit, lambda m: m.vit.embeddings.position_embeddings[0], lambda m, i: m.vit.layers[i].mlp.fc1,
                  "vit.layers.{}.", lambda: {"pixel_values": torch.randn(2, 3, 32, 32)})}


@pytest.mark.parametrize("family", ["opt", "vit"])
def test_weight_importance_keeps_the_live_hidden_channels_heads_and_neurons(family, tmp_path):
    """Planted dead hidden channels, one dead head per layer and dead FFN neurons (every slice zero in the big
    checkpoint): weight importance keeps exactly the live ones."""
    build, hidden_vector, first_ffn, prefix, _ = MODELS[family]
    torch.manual_seed(0)
    big = build(64, 4, 256)
    dead_hidden, dead_neurons = list(range(1, 64, 4)), list(range(0, 256, 2))
    _plant(big, hidden=dead_hidden, head=1, neurons=dead_neurons)
    path = tmp_path / "big.safetensors"
    save_state_dict(big.state_dict(), path)
    small = build(48, 3, 128)
    config = PruneConfig().set_steps(["prune_bert_intra_block"]).set_importance("weight")
    prune_model_weight(small, config, str(path))
    assert config.report["hidden"] == [48, 64]
    for layer in range(2):
        assert config.report["heads"][prefix.format(layer)] == [0, 2, 3]
        assert (first_ffn(small, layer).weight.abs().sum(1) > 0).all()  # no dead neuron kept
    assert (hidden_vector(small).abs().sum(0) > 0).all()  # no dead hidden channel kept


@pytest.mark.parametrize("family", ["opt", "vit"])
def test_dropping_dead_neurons_by_weight_importance_keeps_the_outputs(family, tmp_path):
    build, _, _, _, inputs = MODELS[family]
    torch.manual_seed(0)
    big = build(64, 4, 256)
    _plant(big, neurons=list(range(0, 256, 2)))
    path = tmp_path / "big.safetensors"
    save_state_dict(big.state_dict(), path)
    small = build(64, 4, 128)
    prune_model_weight(small, PruneConfig().set_steps(["prune_bert_intra_block"]).set_importance("weight"), str(path))
    batch = inputs()
    with torch.no_grad():
        assert torch.allclose(small(**batch).logits, big(**batch).logits, atol=1e-5)
