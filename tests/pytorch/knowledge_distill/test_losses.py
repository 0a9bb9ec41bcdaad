"""Every loss against a hand computation on small tensors, and gradients reach the student only."""
import math

import pytest
import torch

from msmodelslim.pytorch.knowledge_distill import losses

S = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]])
T = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.0, -1.0]])


def softmax(row, temperature=1.0):
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def test_kd_cross_entropy_original_formula_and_t2():
    expected = 0.0
    for s_row, t_row in zip(S.tolist(), T.tolist()):
        p, q = softmax(t_row, 2.0), softmax(s_row, 2.0)
        expected -= sum(pi * math.log(qi) for pi, qi in zip(p, q))
    expected /= 2
    assert losses.KDCrossEntropy()(S, T, 2.0).item() == pytest.approx(expected, rel=1e-6)
    assert losses.KDCrossEntropy(scale_t2=True)(S, T, 2.0).item() == pytest.approx(4 * expected, rel=1e-6)
    assert losses.KDCrossEntropy()(S, T).item() == pytest.approx(
        -sum(sum(p * math.log(q) for p, q in zip(softmax(t), softmax(s))) for s, t in zip(S.tolist(), T.tolist())) / 2,
        rel=1e-6)


def test_kd_kl_divergence():
    expected = 0.0
    for s_row, t_row in zip(S.tolist(), T.tolist()):
        p, q = softmax(t_row, 2.0), softmax(s_row, 2.0)
        expected += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    expected = expected / 2 * 4
    assert losses.KDKLDiv()(S, T, 2.0).item() == pytest.approx(expected, rel=1e-6)
    assert losses.KDKLDiv()(T, T, 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_mse_and_hard_cross_entropy():
    assert losses.KDMse()(S, T, 2.0).item() == pytest.approx(((S - T) / 2).square().mean().item())
    targets = [0, 0]  # argmax of each teacher row
    expected = -sum(math.log(softmax(row)[t]) for row, t in zip(S.tolist(), targets)) / 2
    assert losses.HardKDCrossEntropy()(S, T).item() == pytest.approx(expected, rel=1e-6)


def test_hidden_mse_with_and_without_mask():
    s = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4)
    t = torch.zeros(1, 3, 4)
    assert losses.HiddenMse()(s, t).item() == pytest.approx(s.square().mean().item())
    mask = torch.tensor([[1, 1, 0]])
    assert losses.HiddenMse()(s, t, mask).item() == pytest.approx(s[:, :2].square().mean().item())


def test_hidden_cosine():
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    t = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert losses.HiddenCosine()(s, t).item() == pytest.approx(0.5)  # (1 - 1 + 1 - 0) / 2
    assert losses.HiddenCosine()(s, t, torch.tensor([[1, 0]])).item() == pytest.approx(0.0)


def test_attention_kl():
    teacher = torch.tensor([[[[0.5, 0.5], [0.9, 0.1]]]])
    student = torch.tensor([[[[0.25, 0.75], [0.9, 0.1]]]])
    expected = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75) + 0.0) / 2
    assert losses.AttentionKL()(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_mmd_compares_token_gram_matrices_of_different_widths():
    s = torch.randn(2, 5, 8)
    t = torch.randn(2, 5, 16)
    gram = lambda x: x @ x.transpose(-1, -2) / x.shape[-1]  # noqa: E731
    assert losses.MMD()(s, t).item() == pytest.approx((gram(s) - gram(t)).square().mean().item(), rel=1e-5)
    flat = losses.MMD(batch_size=2)(s.reshape(10, 8), t.reshape(10, 16))
    assert flat.item() == pytest.approx(losses.MMD()(s, t).item(), rel=1e-6)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_gradient_reaches_the_student_only(name):
    shape = (2, 2, 4, 4) if name == "AttentionKL" else (2, 3, 4)
    student = torch.rand(shape, requires_grad=True)
    teacher = torch.rand(shape, requires_grad=True)
    if name == "AttentionKL":
        student_in, teacher_in = student.softmax(-1), teacher.softmax(-1)
    else:
        student_in, teacher_in = student, teacher
    loss = losses.LOSSES[name]()
    with torch.no_grad():
        teacher_value = teacher_in.clone()
    value = loss(student_in, teacher_value)
    value.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
