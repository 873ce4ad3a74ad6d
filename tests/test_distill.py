"""Distillation (dlbook.distill): the loss against F.kl_div / F.cross_entropy, the gradient
(q - p) / T and its large-T form, training and the logits cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlbook.distill import BagOfTokens, cached_teacher_logits, distillation_loss, train_student


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (2.0, 0.7), (4.0, 0.0), (3.0, 1.0)])
def test_loss_by_hand(T, alpha):
    torch.manual_seed(0)
    z, v, y = torch.randn(5, 4), 2 * torch.randn(5, 4), torch.randint(0, 4, (5,))
    soft = F.kl_div(F.log_softmax(z / T, -1), F.log_softmax(v / T, -1), reduction="batchmean",
                    log_target=True)
    expected = alpha * T * T * soft + (1 - alpha) * F.cross_entropy(z, y)
    torch.testing.assert_close(distillation_loss(z, v, y, T, alpha), expected)


def test_gradient_is_q_minus_p_over_t():
    torch.manual_seed(1)
    v = torch.randn(3, 6)
    for T in (0.5, 1.0, 4.0):
        z = torch.randn(3, 6, requires_grad=True)
        distillation_loss(z, v, None, T, alpha=1.0).backward()
        q, p = F.softmax(z.detach() / T, -1), F.softmax(v / T, -1)
        torch.testing.assert_close(z.grad, T * T * (q - p) / T / 3)  # batch mean of 3
    z = torch.randn(1, 6, requires_grad=True)
    v_leaf = v[:1].clone().requires_grad_()  # a teacher output that could take a gradient
    distillation_loss(z, v_leaf, None, 1.0, alpha=1.0).backward()
    assert z.grad is not None and v_leaf.grad is None  # the teacher is a constant (detached)


def test_t_squared_keeps_gradient_scale():
    torch.manual_seed(2)
    z0, v = torch.randn(1, 10), torch.randn(1, 10)
    z0, v = z0 - z0.mean(), v - v.mean()
    norms = {}
    for T in (50.0, 100.0, 200.0):
        z = z0.clone().requires_grad_()
        distillation_loss(z, v, None, T, alpha=1.0).backward()
        norms[T] = z.grad.norm().item()
        # large T: gradient of the KL term alone is about (z - v) / (K T^2)
        approx = (z0 - v) / (10 * T**2)
        assert (z.grad / T**2 - approx).norm() < 0.03 * approx.norm()
    assert norms[200.0] == pytest.approx(norms[50.0], rel=0.02)


def test_errors():
    z = torch.zeros(2, 3)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="T must be > 0"):
        distillation_loss(z, z, y, T=0.0)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(z, z, y, alpha=1.5)
    with pytest.raises(ValueError, match="one shape"):
        distillation_loss(z, torch.zeros(2, 4), y)
    with pytest.raises(ValueError, match="targets must be"):
        distillation_loss(z, z, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets are needed"):
        distillation_loss(z, z, None, alpha=0.5)


def test_student_learns_and_seeds_repeat():
    torch.manual_seed(0)
    # class c is marked by token c + 1 somewhere in the document
    ids, labels = [], []
    for i in range(120):
        c = i % 3
        doc = torch.randint(4, 20, (int(torch.randint(3, 8, (1,))),)).tolist()
        doc.insert(1, c + 1)
        ids.append(doc)
        labels.append(c)
    y = torch.tensor(labels)
    teacher = F.one_hot(y, 3).float() * 5
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = BagOfTokens(20, 3, dim=16, dropout=0.0)
        losses = train_student(model, ids, y, teacher, T=2.0, alpha=0.5, steps=60, seed=3)
        runs.append(losses)
    assert runs[0] == runs[1]
    assert losses[-1] < losses[0] / 3
    with pytest.raises(ValueError, match="as many"):
        train_student(model, ids, y[:5])


def test_logits_cache(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        n: int

    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).view(3, 2)

    a, new_a = cached_teacher_logits("t-logits", Cfg(3), compute)
    b, new_b = cached_teacher_logits("t-logits", Cfg(3), compute)
    assert new_a and not new_b and len(calls) == 1
    torch.testing.assert_close(a, b)
