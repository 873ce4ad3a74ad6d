"""Parity of the library's optimizers written from their equations (:mod:`dlbook.optim`,
section 2.4) with ``torch.optim``: over several seeds, shapes and hyper-parameters, in float64,
step by step, every parameter equal."""

from __future__ import annotations

import math

import pytest
import torch

from dlbook.optim import SGD, Adam, AdamW, RMSProp

CASES = [
    (SGD, torch.optim.SGD, {"lr": 0.05}),
    (SGD, torch.optim.SGD, {"lr": 0.02, "momentum": 0.9}),
    (SGD, torch.optim.SGD, {"lr": 0.02, "momentum": 0.5, "weight_decay": 0.1}),
    (RMSProp, torch.optim.RMSprop, {"lr": 1e-2}),
    (RMSProp, torch.optim.RMSprop, {"lr": 3e-3, "alpha": 0.9, "eps": 1e-3, "weight_decay": 0.05}),
    (Adam, torch.optim.Adam, {"lr": 1e-2}),
    (Adam, torch.optim.Adam, {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.1}),
    (AdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    (AdamW, torch.optim.AdamW, {"lr": 3e-3, "betas": (0.5, 0.9), "eps": 1e-6, "weight_decay": 0.5}),
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
    my_params = [x.clone().requires_grad_() for x in init]
    opt, mine = theirs(torch_params, **hyper), ours(my_params, **hyper)
    for step in range(60):
        for params, o in ((torch_params, opt), (my_params, mine)):
            o.zero_grad()
            loss_fn(params, target).backward()
            o.step()
        for a, b in zip(my_params, torch_params, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"step {step}")
        assert all(math.isfinite(x.abs().max().item()) for x in my_params)


def test_the_optimizers_differ_from_each_other() -> None:
    """The parity test is not vacuous: the rules give different trajectories."""
    outs = []
    for cls in (SGD, RMSProp, Adam, AdamW):
        p = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
        p.grad = torch.tensor([0.3, 0.01], dtype=torch.float64)
        cls([p], lr=0.1, weight_decay=0.1).step()
        outs.append(p.detach())
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.allclose(outs[i], outs[j])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="no parameters"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        Adam([torch.zeros(2, requires_grad=True)], lr=0.0)
