"""The MindSpore BERT of the test zoo, filled with the real all-MiniLM-L6 weights, embeds sentences as the torch
model does."""
import numpy as np
import pytest

mindspore = pytest.importorskip("mindspore")

from msmodelslim import assets  # noqa: E402
from zoo.ms_bert import minilm_l6_ms, save_ckpt, sentence_embeddings_ms  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _pynative_cpu():
    mindspore.set_context(mode=mindspore.PYNATIVE_MODE)
    mindspore.set_device("CPU")


def test_minilm_in_mindspore_embeds_like_the_torch_model():
    from msmodelslim.pytorch.utils.evaluation import sentence_embeddings

    texts = assets.wiki_split()[1][:64]
    torch_model, tokenizer = assets.minilm_l6()
    reference = sentence_embeddings(torch_model, tokenizer, texts, batch_size=64, max_length=64).numpy()
    embeddings = sentence_embeddings_ms(minilm_l6_ms(), tokenizer, texts, batch_size=64, max_length=64)
    cosine = (embeddings * reference).sum(-1)
    assert cosine.mean() >= 0.9999
    assert cosine.min() >= 0.999


def test_ckpt_round_trip_keeps_every_parameter(tmp_path):
    cell = minilm_l6_ms()
    path = save_ckpt(cell, tmp_path / "minilm.ckpt")
    loaded = mindspore.load_checkpoint(path)
    params = cell.parameters_dict()
    assert sorted(loaded) == sorted(params)
    assert all(np.array_equal(loaded[k].asnumpy(), p.asnumpy()) for k, p in params.items())
