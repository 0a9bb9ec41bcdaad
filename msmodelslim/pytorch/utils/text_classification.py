"""A small text-classification task on real data (BBC News with MiniLM encoders) for distillation tests,
benchmarks and the demo: a mean-pooling classifier, tokenised splits, a training loop with or without a teacher."""
import torch
from torch import nn
from tqdm.auto import tqdm

from msmodelslim.utils.logging import logger


class SentenceClassifier(nn.Module):
    """A Hugging Face encoder, mean pooling over real tokens, and a linear head: ``forward(input_ids,
    attention_mask) -> logits``."""

    def __init__(self, encoder, num_classes):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


def bbc_splits(tokenizer, sizes=(300, 200), max_length=128, seed=0):
    """Disjoint, seeded subsets of BBC News with the given ``sizes``, tokenised to ``max_length``: a list of
    splits (dicts of ``input_ids``, ``attention_mask`` and ``labels`` tensors), then the class names."""
    from msmodelslim import assets

    docs, labels, classes = assets.bbc_news()
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    if sum(sizes) > len(order):
        raise ValueError(f"BBC News has {len(order)} articles, fewer than {sum(sizes)}.")
    splits, start = [], 0
    for size in sizes:
        part = order[start:start + size]
        start += size
        encoded = tokenizer([docs[i] for i in part], padding="max_length", truncation=True, max_length=max_length,
                            return_tensors="pt")
        splits.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                       "labels": torch.tensor([labels[i] for i in part])})
    return splits, classes


def concat(*splits):
    """One split made of several."""
    return {key: torch.cat([split[key] for split in splits]) for key in splits[0]}


def batches(split, batch_size, seed=None):
    """Mini-batches of a split (shuffled with ``seed``), as dicts of tensors."""
    count = len(split["labels"])
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)) if seed is not None else \
        torch.arange(count)
    for start in range(0, count, batch_size):
        index = order[start:start + batch_size]
        yield {key: value[index] for key, value in split.items()}


@torch.no_grad()
def accuracy(model, split, batch_size=32):
    """Fraction of correct predictions of ``model`` on a split (eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    correct = 0
    for batch in batches(split, batch_size):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
    model.train(was_training)
    return correct / len(split["labels"])


def train_head(classifier, split, epochs=40, lr=1e-2, seed=0):
    """Train only the head of a classifier on a frozen encoder (features computed once)."""
    with torch.no_grad():
        features, labels = [], []
        classifier.eval()
        for batch in batches(split, 32):
            hidden = classifier.encoder(input_ids=batch["input_ids"],
                                        attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            features.append((hidden * mask).sum(1) / mask.sum(1))
            labels.append(batch["labels"])
    features, labels = torch.cat(features), torch.cat(labels)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(classifier.head.parameters(), lr=lr)
    for _ in range(epochs):
        optimizer.zero_grad()
        nn.functional.cross_entropy(classifier.head(features), labels).backward()
        optimizer.step()
    return classifier


def train(model, split, epochs=2, batch_size=16, lr=5e-5, head_lr=1e-3, seed=0, distill_model=None):
    """Fine-tune ``model`` on ``split`` with cross-entropy, or - when ``distill_model`` (a DistillDualModels
    around ``model``) is given - with ``distill_model.get_total_loss(cross-entropy)``. Returns the mean loss of
    the last epoch."""
    torch.manual_seed(seed)
    owner = distill_model if distill_model is not None else model
    parameters = distill_model.trainable_parameters() if distill_model is not None else list(model.parameters())
    head = set(id(p) for p in getattr(model, "head", nn.Linear(1, 1)).parameters())
    adaptors = set(id(p) for p in (distill_model.adaptors.parameters() if distill_model is not None else []))
    optimizer = torch.optim.AdamW([
        {"params": [p for p in parameters if id(p) not in head and id(p) not in adaptors], "lr": lr},
        {"params": [p for p in parameters if id(p) in head or id(p) in adaptors], "lr": head_lr}])
    model.train()
    last = 0.0
    steps_per_epoch = -(-len(split["labels"]) // batch_size)
    progress = tqdm(total=epochs * steps_per_epoch, desc="training", disable=not logger.isEnabledFor(20))
    for epoch in range(epochs):
        total, steps = 0.0, 0
        for batch in batches(split, batch_size, seed=seed * 1000 + epoch):
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            if distill_model is not None:
                _, logits, _ = owner(**inputs)
                loss = distill_model.get_total_loss(nn.functional.cross_entropy(logits, batch["labels"]))
            else:
                loss = nn.functional.cross_entropy(model(**inputs), batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
            progress.update(1)
        last = total / max(steps, 1)
        logger.debug("epoch %d: loss %.4f", epoch, last)
    progress.close()
    model.eval()
    return last
