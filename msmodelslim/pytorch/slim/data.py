"""Token data for ``slim_model``: a training split and a held-out split that is never trained on, as fixed tensors,
and batches chosen by step number alone (so a resumed run reads exactly the batches an uninterrupted one reads).

Causal language models read packed chunks: the texts joined with blank lines, tokenized once, cut into ``seq_len``
tokens. Encoders read one text per row, truncated and padded to ``seq_len`` with an attention mask, and, for
sequence classifiers, its label when the data has labels (``{"text": ..., "label": ...}`` records).
"""
from dataclasses import dataclass

import torch

HELD_OUT_EVERY = 10  # every 10th text (0, 10, ...) is held out, as the Wikipedia split of msmodelslim.assets


@dataclass
class TokenRows:
    """``ids`` and ``mask``, ``[rows, seq_len]`` LongTensors, and ``labels`` (``[rows]``) or None."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor = None

    def __len__(self):
        return self.ids.shape[0]

    def select(self, index):
        index = torch.as_tensor(index, dtype=torch.long)
        batch = {"input_ids": self.ids[index], "attention_mask": self.mask[index]}
        if self.labels is not None:
            batch["labels"] = self.labels[index]
        return batch

    def head(self, count):
        return TokenRows(self.ids[:count], self.mask[:count],
                         None if self.labels is None else self.labels[:count])

    def tokens(self):
        return int(self.mask.sum())


def is_labelled(data):
    """True when ``data`` is a list of ``{"text": str, "label": int}`` records."""
    return isinstance(data, (list, tuple)) and bool(data) and all(isinstance(r, dict) for r in data)


def check_records(data):
    """Raise ValueError naming the first record that is not ``{"text": str, "label": int >= 0}``."""
    for index, record in enumerate(data):
        text, label = record.get("text"), record.get("label")
        if not isinstance(text, str) or isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise ValueError(f"data[{index}] must be a {{'text': str, 'label': int >= 0}} record, got "
                             f"{str(record)[:80]}.")


def split_texts(data):
    """``(train, held_out)`` of ``data``: ``"wiki"`` (the Wikipedia extracts shipped with the assets, split as
    :func:`msmodelslim.assets.wiki_split`), a list of str or a list of ``{"text", "label"}`` records (every 10th
    held out; records are split as records).

    Raises:
        TypeError: ``data`` is neither ``"wiki"``, a list of str nor a list of records.
        ValueError: no non-blank text, or too few texts to hold one out.
    """
    if data == "wiki":
        from msmodelslim import assets

        return assets.wiki_split()
    if is_labelled(data):
        check_records(data)
        texts = [r for r in data if r["text"].strip()]
    elif not isinstance(data, (list, tuple)) or not all(isinstance(t, str) for t in data):
        raise TypeError(f"data must be 'wiki', a list of str or a list of {{'text', 'label'}} records, not "
                        f"{type(data).__name__}.")
    else:
        texts = [t for t in data if t.strip()]
    if len(texts) < 2:
        raise ValueError(f"data holds {len(texts)} non-blank text(s); slim_model needs at least 2 (one is held out "
                         f"for evaluation, every {HELD_OUT_EVERY}th in general).")
    held_out = texts[::HELD_OUT_EVERY]
    train = [t for i, t in enumerate(texts) if i % HELD_OUT_EVERY]
    return train, held_out


def packed_rows(tokenizer, texts, seq_len, max_rows, name):
    """Up to ``max_rows`` packed chunks of ``seq_len`` tokens of ``texts`` (at least one).

    Raises:
        ValueError: the texts hold fewer than ``seq_len`` tokens.
    """
    needed = max_rows * seq_len
    joined, chars = [], 0
    for text in texts:
        joined.append(text)
        chars += len(text) + 2
        if chars > needed * 8:  # about 4 characters per token, with a wide margin
            break
    ids = tokenizer("\n\n".join(joined), add_special_tokens=False, return_tensors="pt", verbose=False)["input_ids"][0]
    rows = min(ids.numel() // seq_len, max_rows)
    if rows < 1:
        raise ValueError(f"{name} holds {ids.numel()} tokens, fewer than one sequence of seq_len={seq_len}; give more "
                         f"text or a smaller seq_len.")
    ids = ids[:rows * seq_len].view(rows, seq_len).clone()
    return TokenRows(ids, torch.ones_like(ids))


def padded_rows(tokenizer, texts, seq_len, max_rows, name):
    """One row per text (at most ``max_rows``), truncated and padded to ``seq_len`` with special tokens.

    Raises:
        ValueError: no text.
    """
    texts = list(texts[:max_rows])
    if not texts:
        raise ValueError(f"{name} holds no text.")
    labels = None
    if isinstance(texts[0], dict):  # labelled records
        labels = torch.tensor([record["label"] for record in texts], dtype=torch.long)
        texts = [record["text"] for record in texts]
    encoded = tokenizer(texts, truncation=True, max_length=seq_len, padding="max_length", return_tensors="pt")
    return TokenRows(encoded["input_ids"], encoded["attention_mask"], labels)


def order(rows, epoch, seed):
    """The order of the rows in ``epoch``: a fixed permutation per (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(rows, generator=generator)


def batch_at(rows, step, batch_size, seed):
    """The ``step``-th batch of ``batch_size`` rows: epochs of shuffled rows, one after another."""
    first = step * batch_size
    index = []
    while len(index) < batch_size:
        position = first + len(index)
        epoch, offset = divmod(position, len(rows))
        permutation = order(len(rows), epoch, seed)
        take = min(batch_size - len(index), len(rows) - offset)
        index.extend(permutation[offset:offset + take].tolist())
    return rows.select(index)
