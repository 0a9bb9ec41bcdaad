"""prune_model_weight on real pretrained weights: importance beats position."""
import math

import pytest
import torch
import transformers as T

from msmodelslim import assets
from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight
from msmodelslim.pytorch.utils.evaluation import perplexity, sentence_embeddings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    teacher, tokenizer = assets.minilm_l6()
    train, test = assets.wiki_split()
    calibration = [dict(tokenizer(train[i:i + 16], padding=True, truncation=True, max_length=128,
                                  return_tensors="pt")) for i in range(0, 64, 16)]
    held_out = test[:200]
    return teacher, tokenizer, calibration, held_out, sentence_embeddings(teacher, tokenizer, held_out)


def small_minilm(**overrides):
    config = T.BertConfig.from_pretrained(assets.minilm_l6_dir())
    for key, value in overrides.items():
        setattr(config, key, value)
    return T.BertModel(config, add_pooling_layer=False).eval()


def prune_minilm(minilm, importance, layer_map, **shape):
    teacher, _, calibration, _, _ = minilm
    model = small_minilm(**shape)
    config = PruneConfig()
    config.set_steps(["prune_blocks", "prune_bert_intra_block"]).add_blocks_params(
        pattern=r"encoder\.layer\.(\d+)\.", layer_id_map=layer_map)
    if importance == "activation":
        config.set_importance("activation", calibration, model=teacher)
    else:
        config.set_importance(importance)
    prune_model_weight(model, config, str(assets.minilm_l6_dir()))
    return model, config


def test_minilm_three_layers_activation_beats_first(minilm):
    teacher, tokenizer, _, held_out, reference = minilm
    layer_map = {0: 0, 1: 2, 2: 5}
    cosine = {}
    for importance in ("first", "activation"):
        model, config = prune_minilm(minilm, importance, layer_map, num_hidden_layers=3, intermediate_size=768)
        embeddings = sentence_embeddings(model, tokenizer, held_out)
        cosine[importance] = (embeddings * reference).sum(-1).mean().item()
        if importance == "first":  # the original's slices, exactly
            for small_id, big_id in layer_map.items():
                small_layer, big_layer = model.encoder.layer[small_id], teacher.encoder.layer[big_id]
                assert torch.equal(small_layer.intermediate.dense.weight, big_layer.intermediate.dense.weight[:768])
                assert torch.equal(small_layer.output.dense.weight, big_layer.output.dense.weight[:, :768])
                assert torch.equal(small_layer.attention.self.key.weight, big_layer.attention.self.key.weight)
        else:
            assert config.report["ffn"]["encoder.layer.1."] == [768, 1536]
    print(f"\nMiniLM-L6 -> 3 layers, FFN 768: mean cosine to the teacher {cosine}")
    assert cosine["activation"] >= cosine["first"] + 0.03


def _similarity_agreement(a, b):
    """Correlation of the pairwise cosine similarities of two embeddings of the same texts."""
    upper = torch.triu_indices(len(a), len(a), 1)
    return torch.corrcoef(torch.stack([(a @ a.T)[upper[0], upper[1]], (b @ b.T)[upper[0], upper[1]]]))[0, 1].item()


def test_minilm_hidden_256_with_8_heads(minilm):
    _, tokenizer, _, held_out, reference = minilm
    agreement = {}
    for importance in ("first", "activation"):
        model, config = prune_minilm(minilm, importance, {i: i for i in range(6)}, hidden_size=256,
                                     num_attention_heads=8)
        assert model.encoder.layer[0].attention.self.attention_head_size == 32
        if importance == "activation":
            assert config.report["hidden"] == [256, 384]
            assert all(len(heads) == 8 for heads in config.report["heads"].values())
        agreement[importance] = _similarity_agreement(reference, sentence_embeddings(model, tokenizer, held_out))
    print(f"\nMiniLM-L6 -> hidden 256, 8 heads: similarity-structure agreement with the teacher {agreement}")
    assert agreement["activation"] > agreement["first"]


def test_smollm2_to_20_layers_gqa(tmp_path):
    path = assets.smollm2_135m_dir()
    tokenizer = T.AutoTokenizer.from_pretrained(path)
    calibration = [{"input_ids": chunk} for chunk in assets.wiki_token_chunks(tokenizer, "train", 8, 256).split(2)]
    evaluation = assets.wiki_token_chunks(tokenizer, "test", 4, 256)
    layer_map = {i: layer for i, layer in enumerate(list(range(14)) + list(range(24, 30)))}
    results = {}
    for importance in ("first", "activation"):
        config = T.AutoConfig.from_pretrained(path)
        config.num_hidden_layers, config.intermediate_size = 20, 1024
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = 6, 2, 64
        model = T.LlamaForCausalLM(config).eval()
        prune_config = PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"]).add_blocks_params(
            r"model\.layers\.(\d+)\.", layer_map)
        if importance == "activation":
            prune_config.set_importance("activation", calibration)  # the big model is loaded from the directory
        prune_model_weight(model, prune_config, str(path))
        results[importance] = perplexity(model, evaluation)
        if importance == "activation":
            heads = prune_config.report["heads"]["model.layers.3."]
            assert len(heads) == 6 and len({h // 3 for h in heads}) == 2  # two whole key/value groups
            model.save_pretrained(tmp_path)
            reloaded = T.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
            with torch.no_grad():
                assert torch.equal(reloaded(evaluation[:1]).logits, model(evaluation[:1]).logits)
    print(f"\nSmolLM2-135M -> 20 layers, FFN 1024, 6/2 heads: perplexity {results}")
    assert math.isfinite(results["activation"]) and results["activation"] < results["first"]
