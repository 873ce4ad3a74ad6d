"""Parity of compact reference batch/layer normalization formulas with PyTorch's modules.

These are the formulas section 2.6 derives: batch statistics with the biased variance for
normalizing, running statistics with momentum and the unbiased variance, eval mode with the
running statistics; layer norm over the last dimension. Any change in PyTorch's conventions
makes these tests fail.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn


def ref_batch_norm_train(x, gamma, beta, running_mean, running_var, momentum, eps):
    """Return y and the updated running stats for x (B, d) in training mode."""
    mu = x.mean(0)
    var = ((x - mu) ** 2).mean(0)
    b = x.shape[0]
    new_mean = (1 - momentum) * running_mean + momentum * mu
    new_var = (1 - momentum) * running_var + momentum * var * b / (b - 1)
    return gamma * (x - mu) / torch.sqrt(var + eps) + beta, new_mean, new_var


def ref_batch_norm_eval(x, gamma, beta, running_mean, running_var, eps):
    return gamma * (x - running_mean) / torch.sqrt(running_var + eps) + beta


def ref_layer_norm(x, gamma, beta, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return gamma * (x - mu) / torch.sqrt(var + eps) + beta


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
    bn = nn.BatchNorm1d(d, momentum=momentum).double()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(d, generator=g, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(d, generator=g, dtype=torch.float64))
    gamma, beta = bn.weight.detach().clone(), bn.bias.detach().clone()
    mean, var = torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
    for _ in range(steps):
        x = torch.randn(batch, d, generator=g, dtype=torch.float64) * 3 + 1
        x1 = x.clone().requires_grad_()
        x2 = x.clone().requires_grad_()
        y_ref, mean, var = ref_batch_norm_train(x1, gamma, beta, mean, var, momentum, bn.eps)
        y = bn(x2)
        torch.testing.assert_close(y, y_ref)
        dy = torch.randn(batch, d, generator=g, dtype=torch.float64)
        (y * dy).sum().backward()
        (y_ref * dy).sum().backward()
        torch.testing.assert_close(x2.grad, x1.grad)
        mean, var = mean.detach(), var.detach()
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    bn.eval()
    x = torch.randn(3, d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(bn(x), ref_batch_norm_eval(x, gamma, beta, mean, var, bn.eps))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_norm_float32_default_settings(seed: int) -> None:
    torch.manual_seed(seed)
    bn = nn.BatchNorm1d(8)
    mean, var = torch.zeros(8), torch.ones(8)
    for _ in range(6):
        x = torch.randn(16, 8) * 2 - 1
        y_ref, mean, var = ref_batch_norm_train(x, bn.weight, bn.bias, mean, var, 0.1, 1e-5)
        torch.testing.assert_close(bn(x), y_ref)
    torch.testing.assert_close(bn.running_var, var)
    assert bn.num_batches_tracked.item() == 6


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    d=st.integers(2, 16),
    train=st.booleans(),
)
def test_layer_norm_outputs_and_gradients_match(seed, shape, d, train) -> None:
    g = torch.Generator().manual_seed(seed)
    ln = nn.LayerNorm(d).double().train(train)
    with torch.no_grad():
        ln.weight.copy_(torch.rand(d, generator=g, dtype=torch.float64) + 0.5)
        ln.bias.copy_(torch.randn(d, generator=g, dtype=torch.float64))
    gamma = ln.weight.detach().clone().requires_grad_()
    beta = ln.bias.detach().clone().requires_grad_()
    x = torch.randn(*shape, d, generator=g, dtype=torch.float64) * 2 + 0.5
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y = ref_layer_norm(x1, gamma, beta, ln.eps), ln(x2)
    torch.testing.assert_close(y, y_ref)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (y * dy).sum().backward()
    (y_ref * dy).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    torch.testing.assert_close(ln.weight.grad, gamma.grad)
    torch.testing.assert_close(ln.bias.grad, beta.grad)


def test_reference_differs_from_wrong_conventions() -> None:
    """The running variance really is the unbiased one (a biased reference would fail)."""
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(4)
    x = torch.randn(5, 4)
    bn(x)
    biased = 0.9 * torch.ones(4) + 0.1 * x.var(0, unbiased=False)
    assert not torch.allclose(bn.running_var, biased)
    torch.testing.assert_close(bn.running_var, 0.9 * torch.ones(4) + 0.1 * x.var(0, unbiased=True))
