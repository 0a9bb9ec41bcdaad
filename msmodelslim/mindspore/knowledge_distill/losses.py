"""The MindSpore distillation losses. Each is an ``nn.Cell`` called as ``loss(student, teacher)`` or, when the match
sets a temperature, ``loss(student, teacher, temperature)``; all compute in float32 and run in PyNative and GRAPH_MODE.
Formulas (s: student, t: teacher, T: temperature; means over all leading positions):

* ``KDCrossEntropy``: -mean( sum_c softmax(t/T)_c * log_softmax(s/T)_c ) (the original's formula, no T^2);
* ``KDMse``: mean( (s/T - t/T)^2 );
* ``KLDivLoss``: mean( sum_c p_c (log p_c - log q_c) ), p = softmax(t/T), q = softmax(s/T) (the original's, no T^2);
* ``HiddenMse``: mean( (s - t)^2 );
* ``HiddenCosine``: mean( 1 - cos(s, t) ) over the last dimension (DistilBERT's cosine loss).
"""
from mindspore import nn, ops
from mindspore import dtype as mstype
from mindspore import Tensor

COSINE_EPS = 1e-8


def _scaled(logits, temperature):
    """``logits`` in float32 divided by ``temperature`` (a number, or a tensor of one value per row)."""
    logits = logits.astype(mstype.float32)
    if isinstance(temperature, Tensor) and temperature.ndim > 0:
        temperature = temperature.expand_dims(-1)
    return logits / temperature


class KDCrossEntropy(nn.Cell):
    """-mean( sum_c softmax(t/T)_c * log_softmax(s/T)_c )."""

    def construct(self, logits_s, logits_t, temperature=1):
        teacher = ops.softmax(_scaled(logits_t, temperature), -1)
        student = ops.log_softmax(_scaled(logits_s, temperature), -1)
        return -(teacher * student).sum(-1).mean()


class KDMse(nn.Cell):
    """mean( (s/T - t/T)^2 )."""

    def construct(self, logits_s, logits_t, temperature=1):
        return ops.square(_scaled(logits_s, temperature) - _scaled(logits_t, temperature)).mean()


class KLDivLoss(nn.Cell):
    """mean( sum_c p_c (log p_c - log q_c) ), p = softmax(t/T), q = softmax(s/T)."""

    def construct(self, logits_s, logits_t, temperature=1):
        log_p = ops.log_softmax(_scaled(logits_t, temperature), -1)
        log_q = ops.log_softmax(_scaled(logits_s, temperature), -1)
        return (ops.exp(log_p) * (log_p - log_q)).sum(-1).mean()


class HiddenMse(nn.Cell):
    """mean( (s - t)^2 ) in float32."""

    def construct(self, state_s, state_t):
        return ops.square(state_s.astype(mstype.float32) - state_t.astype(mstype.float32)).mean()


class HiddenCosine(nn.Cell):
    """mean( 1 - cos(s, t) ), the cosine taken over the last dimension."""

    def construct(self, state_s, state_t):
        student = state_s.astype(mstype.float32)
        teacher = state_t.astype(mstype.float32)
        dot = (student * teacher).sum(-1)
        norms = ops.sqrt(ops.square(student).sum(-1) * ops.square(teacher).sum(-1))
        return (1 - dot / ops.clamp(norms, min=COSINE_EPS)).mean()


LOSSES = {cls.__name__: cls for cls in (KDCrossEntropy, KDMse, KLDivLoss, HiddenMse, HiddenCosine)}
