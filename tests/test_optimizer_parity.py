"""Parity of the update rules written in chapter 2.4 (Optimizers) with ``torch.optim``.

The chapter's optimizers are teaching versions that live in the chapter; these compact
reference implementations state the same equations (and are written independently of
``torch.optim``'s code), and are checked against ``torch.optim`` over several seeds, shapes and
hyper-parameters, in float64, step by step.
"""

from __future__ import annotations

import math

import pytest
import torch


def sgd(p, g, s, *, lr, momentum=0.0, weight_decay=0.0, **_):
    g = g + weight_decay * p
    if momentum:
        s["v"] = g.clone() if "v" not in s else momentum * s["v"] + g  # v <- mu v + g
        g = s["v"]
    return p - lr * g


def rmsprop(p, g, s, *, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, **_):
    g = g + weight_decay * p
    s["v"] = alpha * s.get("v", torch.zeros_like(p)) + (1 - alpha) * g * g
    return p - lr * g / (s["v"].sqrt() + eps)  # eps outside the square root


def adam(p, g, s, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False, **_):
    b1, b2 = betas
    if decoupled:
        p = p * (1 - lr * weight_decay)  # AdamW: shrink the weights directly
    else:
        g = g + weight_decay * p  # Adam's L2 penalty: through the gradient
    s["t"] = s.get("t", 0) + 1
    s["m"] = b1 * s.get("m", torch.zeros_like(p)) + (1 - b1) * g
    s["v"] = b2 * s.get("v", torch.zeros_like(p)) + (1 - b2) * g * g
    m_hat = s["m"] / (1 - b1 ** s["t"])
    v_hat = s["v"] / (1 - b2 ** s["t"])
    return p - lr * m_hat / (v_hat.sqrt() + eps)


def adamw(p, g, s, **kw):
    return adam(p, g, s, decoupled=True, **kw)


CASES = [
    (sgd, torch.optim.SGD, {"lr": 0.05}),
    (sgd, torch.optim.SGD, {"lr": 0.02, "momentum": 0.9}),
    (sgd, torch.optim.SGD, {"lr": 0.02, "momentum": 0.5, "weight_decay": 0.1}),
    (rmsprop, torch.optim.RMSprop, {"lr": 1e-2}),
    (rmsprop, torch.optim.RMSprop, {"lr": 3e-3, "alpha": 0.9, "eps": 1e-3, "weight_decay": 0.05}),
    (adam, torch.optim.Adam, {"lr": 1e-2}),
    (adam, torch.optim.Adam, {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.1}),
    (adamw, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    (adamw, torch.optim.AdamW, {"lr": 3e-3, "betas": (0.5, 0.9), "eps": 1e-6, "weight_decay": 0.5}),
]


def loss_fn(params: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """A non-quadratic loss whose gradient changes sign and scale across parameters."""
    pairs = zip(params, target, strict=True)
    return sum(((p - t) ** 2).sum() + 0.1 * torch.cos(3 * p).sum() for p, t in pairs)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("ours", "theirs", "hyper"), CASES, ids=lambda c: getattr(c, "__name__", "")
)
def test_update_rule_matches_torch_optim(seed, ours, theirs, hyper) -> None:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3,), (4, 5), (2, 3, 2)][: 1 + seed]
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    scales = [10.0 ** torch.randint(-2, 3, (1,), generator=gen).item() for _ in shapes]
    target = [
        torch.randn(s, generator=gen, dtype=torch.float64) * c
        for s, c in zip(shapes, scales, strict=True)
    ]

    torch_params = [x.clone().requires_grad_() for x in init]
    opt = theirs(torch_params, **hyper)
    my_params = [x.clone() for x in init]
    states: list[dict] = [{} for _ in init]
    for step in range(60):
        opt.zero_grad()
        loss_fn(torch_params, target).backward()
        opt.step()

        mine = [x.clone().requires_grad_() for x in my_params]
        grads = torch.autograd.grad(loss_fn(mine, target), mine)
        triples = zip(my_params, grads, states, strict=True)
        my_params = [ours(p, g, s, **hyper) for p, g, s in triples]
        for a, b in zip(my_params, torch_params, strict=True):
            torch.testing.assert_close(a, b.detach(), rtol=1e-9, atol=1e-10, msg=f"step {step}")
        assert all(math.isfinite(x.abs().max().item()) for x in my_params)


def test_references_differ_from_each_other() -> None:
    """The parity test is not vacuous: the rules give different trajectories."""
    p0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    g = torch.tensor([0.3, 0.01], dtype=torch.float64)
    outs = [f(p0, g, {}, lr=0.1, weight_decay=0.1) for f in (sgd, rmsprop, adam, adamw)]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.allclose(outs[i], outs[j])
