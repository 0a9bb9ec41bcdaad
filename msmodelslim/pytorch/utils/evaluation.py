"""Quality measures shared by tests, benchmarks, the command line and the demo."""
import math

import torch


@torch.no_grad()
def perplexity(model, token_chunks, batch_size=4):
    """Perplexity of a causal language model on ``token_chunks`` (``[N, L]`` LongTensor).

    ``exp`` of the mean next-token cross-entropy over every predicted position of every chunk, computed in
    float32 on the model's device. The model's train/eval mode is restored afterwards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    try:
        for start in range(0, token_chunks.shape[0], batch_size):
            ids = token_chunks[start:start + batch_size].to(device)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
            total_loss += loss.item()
            total_tokens += ids[:, 1:].numel()
    finally:
        model.train(was_training)
    return math.exp(total_loss / total_tokens)


@torch.no_grad()
def sentence_embeddings(model, tokenizer, texts, batch_size=32, max_length=128):
    """Mean-pooled, L2-normalised sentence embeddings of a Hugging Face encoder (sentence-transformers style).

    Returns a float32 ``[len(texts), hidden]`` tensor on the CPU.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)
