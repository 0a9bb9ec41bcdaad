"""The distillation losses. Each is an ``nn.Module`` called as ``loss(student, teacher)`` or, when the match sets
a temperature, ``loss(student, teacher, temperature)``; losses taking ``mask`` receive the batch's attention mask
when its shape fits. All compute in float32. Formulas (s: student, t: teacher, T: temperature, averages over all
leading positions):

* ``KDCrossEntropy``: -mean( sum_c softmax(t/T)_c * log_softmax(s/T)_c ), times T^2 with ``scale_t2=True``
  (the original's formula, without T^2 by default);
* ``KDKLDiv``: T^2 * mean( sum_c p_c (log p_c - log q_c) ), p = softmax(t/T), q = softmax(s/T) (Hinton et al. 2015);
* ``KDMse``: mean( (s/T - t/T)^2 );
* ``HardKDCrossEntropy``: cross-entropy of s against argmax(t) over the last dimension;
* ``HiddenMse``: mean( (s - t)^2 ), over unmasked positions when a mask is given;
* ``HiddenCosine``: mean( 1 - cos(s, t) ) over (unmasked) positions (DistilBERT's cosine loss);
* ``AttentionKL``: mean over batch, heads and query positions of sum_k t_k (log t_k - log s_k), for attention
  probabilities [batch, heads, query, key] (MiniLM, TinyBERT);
* ``MMD``: mse of the token Gram matrices G = X X^T / H of student and teacher, [batch, tokens, hidden] (2-D inputs
  are reshaped with ``batch_size``); student and teacher widths may differ.
"""
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-12


def _scaled(logits, temperature):
    logits = logits.float()
    if temperature is None:
        return logits
    if isinstance(temperature, torch.Tensor) and temperature.dim() > 0:
        temperature = temperature.unsqueeze(-1)
    return logits / temperature


class KDCrossEntropy(nn.Module):
    def __init__(self, scale_t2=False):
        super().__init__()
        self.scale_t2 = scale_t2

    def forward(self, logits_s, logits_t, temperature=1):
        loss = -(F.softmax(_scaled(logits_t, temperature), -1) * F.log_softmax(_scaled(logits_s, temperature), -1))
        loss = loss.sum(-1).mean()
        return loss * temperature ** 2 if self.scale_t2 else loss


class KDKLDiv(nn.Module):
    def __init__(self, scale_t2=True):
        super().__init__()
        self.scale_t2 = scale_t2

    def forward(self, logits_s, logits_t, temperature=1):
        log_p = F.log_softmax(_scaled(logits_t, temperature), -1)
        log_q = F.log_softmax(_scaled(logits_s, temperature), -1)
        loss = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
        return loss * temperature ** 2 if self.scale_t2 else loss


class KDMse(nn.Module):
    def forward(self, logits_s, logits_t, temperature=1):
        return F.mse_loss(_scaled(logits_s, temperature), _scaled(logits_t, temperature))


class HardKDCrossEntropy(nn.Module):
    def forward(self, logits_s, logits_t):
        logits_s = logits_s.float()
        return F.cross_entropy(logits_s.reshape(-1, logits_s.shape[-1]), logits_t.argmax(-1).reshape(-1))


def _masked_mean(values, mask):
    """Mean of per-position ``values`` [..., positions] over positions where ``mask`` is set."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


class HiddenMse(nn.Module):
    def forward(self, state_s, state_t, mask=None):
        per_position = (state_s.float() - state_t.float()).square().mean(-1)
        return _masked_mean(per_position, mask)


class HiddenCosine(nn.Module):
    def forward(self, state_s, state_t, mask=None):
        cosine = F.cosine_similarity(state_s.float(), state_t.float(), dim=-1, eps=1e-8)
        return _masked_mean(1 - cosine, mask)


class AttentionKL(nn.Module):
    def forward(self, attention_s, attention_t):
        teacher = attention_t.float().clamp(min=EPS)
        student = attention_s.float().clamp(min=EPS)
        return (teacher * (teacher.log() - student.log())).sum(-1).mean()


class MMD(nn.Module):
    def __init__(self, batch_size=None):
        super().__init__()
        self.batch_size = batch_size

    def _gram(self, states):
        states = states.float()
        if states.dim() == 2:
            states = states.reshape(self.batch_size or 1, -1, states.shape[-1])
        return states @ states.transpose(-1, -2) / states.shape[-1]

    def forward(self, state_s, state_t, mask=None):
        return F.mse_loss(self._gram(state_s), self._gram(state_t))


LOSSES = {cls.__name__: cls for cls in (KDCrossEntropy, KDKLDiv, KDMse, HardKDCrossEntropy, HiddenMse, HiddenCosine,
                                        AttentionKL, MMD)}
