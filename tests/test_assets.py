"""The real pretrained models and data sets load offline and behave like trained networks."""
import math

import pytest
import torch

from msmodelslim import assets
from msmodelslim.errors import AssetNotInstalledError
from msmodelslim.pytorch.utils.evaluation import perplexity, sentence_embeddings

SENTENCES = ["A cat sits on the mat.", "A feline is resting on a rug.", "Stock markets fell sharply on Monday."]


def test_missing_package_names_what_to_install():
    with pytest.raises(AssetNotInstalledError) as info:
        assets.package_file("definitely-not-an-installed-dist", ".bin")
    assert "definitely-not-an-installed-dist" in str(info.value)
    assert "pip install" in str(info.value)
    assert isinstance(info.value, ImportError)


def _similar_closer_than_unrelated(model, tokenizer):
    emb = sentence_embeddings(model, tokenizer, SENTENCES)
    similar, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert similar > unrelated + 0.2, (similar, unrelated)


@pytest.mark.slow
def test_minilm_l6_embeds_sentences():
    model, tokenizer = assets.minilm_l6()
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert not model.training
    _similar_closer_than_unrelated(model, tokenizer)


@pytest.mark.slow
def test_minilm_l3_from_onnx_embeds_sentences():
    model, tokenizer = assets.minilm_l3()
    assert model.config.num_hidden_layers == 3
    _similar_closer_than_unrelated(model, tokenizer)


@pytest.mark.slow
def test_smollm2_perplexity_on_wikipedia():
    model, tokenizer = assets.smollm2_135m()
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == \
        (30, 576, 9, 3)
    chunks = assets.wiki_token_chunks(tokenizer, "test", num_chunks=2, seq_len=256)
    ppl = perplexity(model, chunks)
    assert math.isfinite(ppl) and ppl < 50
    assert assets.smollm2_135m_dir().joinpath("model.safetensors").is_file()  # cached for the next call


@pytest.mark.slow
def test_efficientnet_lite0_classifies_real_photographs():
    model = assets.efficientnet_lite0()
    images = assets.sample_images()
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (2, 1000)
    top5 = logits.topk(5).indices
    assert 698 in top5[0].tolist()  # the temple photograph: "palace" among the top 5
    assert top5[1, 0].item() == 985  # the flower photograph: "daisy"


def test_wikipedia_split_is_fixed_and_disjoint():
    train, test = assets.wiki_split()
    texts = assets.wiki_extracts()
    assert len(texts) > 10000 - 100
    assert test == texts[::10]
    assert len(train) + len(test) == len(texts)
    assert not set(test[:50]) & set(train)


def test_wikipedia_chunks_have_the_requested_shape():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_l6_dir())
    chunks = assets.wiki_token_chunks(tokenizer, "train", num_chunks=3, seq_len=64)
    assert chunks.shape == (3, 64) and chunks.dtype == torch.long
    with pytest.raises(ValueError, match="split must be"):
        assets.wiki_token_chunks(tokenizer, "validation")


def test_bbc_news():
    docs, labels, classes = assets.bbc_news()
    assert classes == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(docs) == len(labels) == 2225
    assert [labels.count(i) for i in range(5)] == [510, 386, 417, 511, 401]
    assert all(len(d) > 100 for d in docs[:20])
