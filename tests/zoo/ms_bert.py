"""A MindSpore BERT encoder with the Hugging Face ``BertModel`` layout (the all-MiniLM-L6 architecture), filled from
the real all-MiniLM-L6-v2 safetensors, and saved as a ``.ckpt``: there is no pip-shipped pretrained MindSpore model.

Parameter names follow Hugging Face's, with MindSpore's leaf names: ``*_embeddings.embedding_table`` for
``*_embeddings.weight`` and ``LayerNorm.gamma`` / ``LayerNorm.beta`` for ``LayerNorm.weight`` / ``.bias``
(:func:`hf_name` / :func:`ms_name` convert). Imports no torch.
"""
import json
import math
import re
from dataclasses import dataclass, fields

import mindspore
import numpy as np
from mindspore import nn, ops

MASKED = -1e9  # added to the attention scores of padding tokens


@dataclass
class MsBertConfig:
    """The shape of the encoder (defaults: all-MiniLM-L6-v2)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    head_size: int = 0  # 0: hidden_size // num_attention_heads

    @classmethod
    def from_json_file(cls, path, **overrides):
        """The fields of a Hugging Face ``config.json``, then ``overrides``."""
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in values.items() if k in known}, **overrides})

    @property
    def attention_head_size(self):
        return self.head_size or self.hidden_size // self.num_attention_heads


def _layer_norm(config):
    return nn.LayerNorm((config.hidden_size,), epsilon=config.layer_norm_eps)


class BertEmbeddings(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = _layer_norm(config)

    def construct(self, input_ids, token_type_ids):
        positions = ops.arange(input_ids.shape[1], dtype=mindspore.int32).expand_dims(0)
        hidden = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
                  + self.token_type_embeddings(token_type_ids))
        return self.LayerNorm(hidden)


class BertSelfAttention(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.attention_head_size
        width = self.num_attention_heads * self.attention_head_size
        self.query = nn.Dense(config.hidden_size, width)
        self.key = nn.Dense(config.hidden_size, width)
        self.value = nn.Dense(config.hidden_size, width)

    def _heads(self, x):
        batch, length, _ = x.shape
        return x.reshape(batch, length, -1, self.attention_head_size).transpose(0, 2, 1, 3)

    def construct(self, hidden, mask_bias):
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(hidden)), self._heads(self.value(hidden))
        scores = ops.matmul(q, k.transpose(0, 1, 3, 2)) / math.sqrt(self.attention_head_size) + mask_bias
        context = ops.matmul(ops.softmax(scores, axis=-1), v)
        batch, _, length, _ = context.shape
        return context.transpose(0, 2, 1, 3).reshape(batch, length, -1)


class BertSelfOutput(nn.Cell):
    def __init__(self, config):
        super().__init__()
        width = config.num_attention_heads * config.attention_head_size
        self.dense = nn.Dense(width, config.hidden_size)
        self.LayerNorm = _layer_norm(config)

    def construct(self, hidden, residual):
        return self.LayerNorm(self.dense(hidden) + residual)


class BertAttention(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def construct(self, hidden, mask_bias):
        return self.output(self.self(hidden, mask_bias), hidden)


class BertIntermediate(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Dense(config.hidden_size, config.intermediate_size)
        self.act = nn.GELU(approximate=False)  # Hugging Face "gelu": the exact erf form

    def construct(self, hidden):
        return self.act(self.dense(hidden))


class BertOutput(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Dense(config.intermediate_size, config.hidden_size)
        self.LayerNorm = _layer_norm(config)

    def construct(self, hidden, residual):
        return self.LayerNorm(self.dense(hidden) + residual)


class BertLayer(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def construct(self, hidden, mask_bias):
        attended = self.attention(hidden, mask_bias)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.CellList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def construct(self, hidden, mask_bias):
        for layer in self.layer:
            hidden = layer(hidden, mask_bias)
        return hidden


class BertPooler(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Dense(config.hidden_size, config.hidden_size)

    def construct(self, hidden):
        return ops.tanh(self.dense(hidden[:, 0]))


class MsBertModel(nn.Cell):
    """``construct(input_ids, attention_mask=None, token_type_ids=None)`` -> ``(last hidden state, pooled)``."""

    def __init__(self, config=None):
        super().__init__()
        self.config = config or MsBertConfig()
        self.embeddings = BertEmbeddings(self.config)
        self.encoder = BertEncoder(self.config)
        self.pooler = BertPooler(self.config)

    def construct(self, input_ids, attention_mask=None, token_type_ids=None):
        if attention_mask is None:
            attention_mask = ops.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = ops.zeros_like(input_ids)
        mask_bias = (1.0 - attention_mask.astype(mindspore.float32)).reshape(input_ids.shape[0], 1, 1, -1) * MASKED
        hidden = self.encoder(self.embeddings(input_ids, token_type_ids), mask_bias)
        return hidden, self.pooler(hidden)


# --------------------------------------------------------------------------------------------- names and weights
_TO_MS = ((re.compile(r"_embeddings\.weight$"), "_embeddings.embedding_table"),
          (re.compile(r"LayerNorm\.weight$"), "LayerNorm.gamma"), (re.compile(r"LayerNorm\.bias$"), "LayerNorm.beta"))
_TO_HF = ((re.compile(r"_embeddings\.embedding_table$"), "_embeddings.weight"),
          (re.compile(r"LayerNorm\.gamma$"), "LayerNorm.weight"), (re.compile(r"LayerNorm\.beta$"), "LayerNorm.bias"))


def ms_name(hf_key):
    """The MindSpore parameter name of a Hugging Face ``BertModel`` key."""
    for pattern, replacement in _TO_MS:
        hf_key = pattern.sub(replacement, hf_key)
    return hf_key


def hf_name(ms_key):
    """The Hugging Face ``BertModel`` key of a MindSpore parameter name."""
    for pattern, replacement in _TO_HF:
        ms_key = pattern.sub(replacement, ms_key)
    return ms_key


def load_hf_weights(cell, safetensors_path):
    """Fill every parameter of ``cell`` from a Hugging Face BERT safetensors file (read with NumPy).

    Raises:
        ValueError: a parameter of the cell has no value of the same shape in the file.
    """
    from safetensors.numpy import load_file

    arrays = {ms_name(k[len("bert."):] if k.startswith("bert.") else k): v
              for k, v in load_file(str(safetensors_path)).items()}
    targets = cell.parameters_dict()
    bad = [k for k, p in targets.items() if k not in arrays or tuple(arrays[k].shape) != tuple(p.shape)]
    if bad:
        raise ValueError(f"{safetensors_path} cannot fill {', '.join(bad[:5])}")
    params = {k: mindspore.Parameter(mindspore.Tensor(np.ascontiguousarray(arrays[k])), name=k) for k in targets}
    mindspore.load_param_into_net(cell, params, strict_load=True)
    return cell


def minilm_l6_ms():
    """all-MiniLM-L6-v2 as a MindSpore :class:`MsBertModel` (eval mode) with the real weights."""
    from msmodelslim import assets

    folder = assets.minilm_l6_dir()
    cell = MsBertModel(MsBertConfig.from_json_file(folder / "config.json"))
    load_hf_weights(cell, folder / "model.safetensors")
    cell.set_train(False)
    return cell


def save_ckpt(cell, path):
    """Save the cell's parameters as a MindSpore ``.ckpt``; returns ``path`` as a str."""
    mindspore.save_checkpoint(cell, str(path))
    return str(path)


def sentence_embeddings_ms(cell, tokenizer, texts, batch_size=32, max_length=128):
    """Mean-pooled, L2-normalised sentence embeddings as a float32 NumPy ``[len(texts), hidden]`` array."""
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="np")
        ids = mindspore.Tensor(batch["input_ids"].astype(np.int32))
        mask = batch["attention_mask"].astype(np.float32)
        types = mindspore.Tensor(batch.get("token_type_ids", np.zeros_like(batch["input_ids"])).astype(np.int32))
        hidden, _ = cell(ids, mindspore.Tensor(mask), types)
        hidden = hidden.asnumpy()
        pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1.0)
        out.append(pooled / np.linalg.norm(pooled, axis=-1, keepdims=True))
    return np.concatenate(out).astype(np.float32)
