"""Parity of the library's batch/layer normalization written from their equations
(:mod:`dlbook.norms`, section 2.6) with PyTorch's modules: outputs, running statistics,
eval mode, and the hand-derived backward passes against autograd."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dlbook.norms import HandBatchNorm, bn_backward, hand_layer_norm, ln_backward


def _pair(d: int, momentum: float, g: torch.Generator) -> tuple[HandBatchNorm, nn.BatchNorm1d]:
    theirs = nn.BatchNorm1d(d, momentum=momentum).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.rand(d, generator=g, dtype=torch.float64) + 0.5)
        theirs.bias.copy_(torch.randn(d, generator=g, dtype=torch.float64))
    ours = HandBatchNorm(d, momentum=momentum, eps=theirs.eps)
    ours.gamma = theirs.weight.detach().clone().requires_grad_()
    ours.beta = theirs.bias.detach().clone().requires_grad_()
    ours.running_mean = ours.running_mean.double()
    ours.running_var = ours.running_var.double()
    return ours, theirs


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(2, 40),
    d=st.integers(1, 12),
    momentum=st.sampled_from([0.1, 0.01, 0.5]),
    steps=st.integers(1, 4),
)
def test_batch_norm_train_and_eval_match(seed, batch, d, momentum, steps) -> None:
    g = torch.Generator().manual_seed(seed)
    ours, theirs = _pair(d, momentum, g)
    for _ in range(steps):
        x = torch.randn(batch, d, generator=g, dtype=torch.float64) * 3 + 1
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ours, y = ours(x1), theirs(x2)
        torch.testing.assert_close(y_ours, y)
        dy = torch.randn(batch, d, generator=g, dtype=torch.float64)
        (y * dy).sum().backward()
        (y_ours * dy).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)
        torch.testing.assert_close(bn_backward(x, ours.gamma.detach(), dy, theirs.eps), x2.grad)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)  # the unbiased estimate
    torch.testing.assert_close(ours.gamma.grad, theirs.weight.grad)
    torch.testing.assert_close(ours.beta.grad, theirs.bias.grad)
    ours.training = False
    theirs.eval()
    x = torch.randn(3, d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x))


def test_batch_norm_needs_two_examples_to_train() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        HandBatchNorm(3)(torch.randn(1, 3))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    d=st.integers(2, 16),
)
def test_layer_norm_outputs_and_gradients_match(seed, shape, d) -> None:
    g = torch.Generator().manual_seed(seed)
    ln = nn.LayerNorm(d).double()
    with torch.no_grad():
        ln.weight.copy_(torch.rand(d, generator=g, dtype=torch.float64) + 0.5)
        ln.bias.copy_(torch.randn(d, generator=g, dtype=torch.float64))
    gamma = ln.weight.detach().clone().requires_grad_()
    beta = ln.bias.detach().clone().requires_grad_()
    x = torch.randn(*shape, d, generator=g, dtype=torch.float64) * 2 + 0.5
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y = hand_layer_norm(x1, gamma, beta, ln.eps), ln(x2)
    torch.testing.assert_close(y_ours, y)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (y * dy).sum().backward()
    (y_ours * dy).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ln_backward(x, gamma.detach(), dy, ln.eps), x2.grad)
    torch.testing.assert_close(gamma.grad, ln.weight.grad)
    torch.testing.assert_close(beta.grad, ln.bias.grad)


def test_a_biased_running_variance_would_be_caught() -> None:
    """The parity test is not vacuous: the running variance really is the unbiased one."""
    ours = HandBatchNorm(4)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    ours(x)
    biased = 0.9 * torch.ones(4) + 0.1 * x.var(0, unbiased=False)
    assert not torch.allclose(ours.running_var, biased)
