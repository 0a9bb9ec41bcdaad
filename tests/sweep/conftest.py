"""Fixtures of the bad-input sweep (shared/reference/bad-input-2026-11-26.md): real tiny models on disk. The command
line runners are in ``tests/zoo/cli_runner.py``."""
import pytest
import torch


def _llama(tokenizer, layers, ffn=128):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2, intermediate_size=ffn,
                                        tie_word_embeddings=True))


@pytest.fixture(scope="session")
def fx(tmp_path_factory):
    """``tiny`` (2-layer Llama speaking SmolLM2's tokenizer), ``big4`` (4 layers) and ``small_config.json`` (2 layers,
    FFN 64), as Hugging Face directories in a read-only-by-convention fixture folder."""
    from transformers import AutoTokenizer

    from msmodelslim import assets

    root = tmp_path_factory.mktemp("fx")
    tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_135m_dir())
    for name, layers in (("tiny", 2), ("big4", 4)):
        model = _llama(tokenizer, layers)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    small = _llama(tokenizer, 2, ffn=64)
    small.config.architectures = ["LlamaForCausalLM"]
    (root / "small_config.json").write_text(small.config.to_json_string())
    return root
