"""Tests of dlbook.schedules: the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook.schedules import warmup_cosine, warmup_cosine_scheduler


def lrs_of(warmup: int, total: int, max_lr: float = 1e-3, min_lr: float = 1e-5) -> list[float]:
    return [
        warmup_cosine(t, warmup_steps=warmup, total_steps=total, max_lr=max_lr, min_lr=min_lr)
        for t in range(total + 5)
    ]


def test_warmup_start_and_end() -> None:
    lrs = lrs_of(10, 100, max_lr=2.0, min_lr=0.2)
    assert lrs[0] == pytest.approx(2.0 / 10)  # first step already moves
    assert lrs[4] == pytest.approx(2.0 * 5 / 10)
    assert lrs[9] == pytest.approx(2.0)  # last warm-up step reaches the peak
    assert lrs[10] == pytest.approx(2.0)  # decay starts at the peak
    assert all(b > a for a, b in zip(lrs[:9], lrs[1:10], strict=True))  # strictly rising


def test_cosine_midpoint_and_floor() -> None:
    max_lr, min_lr = 3.0, 1.0
    lrs = lrs_of(20, 120, max_lr=max_lr, min_lr=min_lr)
    assert lrs[70] == pytest.approx((max_lr + min_lr) / 2)  # halfway through the decay
    assert lrs[120] == pytest.approx(min_lr)
    assert all(lr == pytest.approx(min_lr) for lr in lrs[120:])  # stays on the floor
    assert min(lrs[20:]) == pytest.approx(min_lr)  # the floor is the lowest value after warm-up


@settings(max_examples=60, deadline=None)
@given(
    total=st.integers(1, 400),
    frac=st.floats(0.0, 1.0),
    max_lr=st.floats(1e-6, 10.0),
    ratio=st.floats(0.0, 1.0),
)
def test_monotone_decay_and_bounds(total: int, frac: float, max_lr: float, ratio: float) -> None:
    warmup = int(frac * total)
    min_lr = ratio * max_lr
    lrs = lrs_of(warmup, total, max_lr=max_lr, min_lr=min_lr)
    decay = lrs[warmup:]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(decay, decay[1:], strict=False))
    assert all(0 <= lr <= max_lr * (1 + 1e-12) for lr in lrs)
    assert all(lr > 0 for lr in lrs[:warmup])  # no wasted warm-up step
    assert all(lr >= min_lr * (1 - 1e-12) for lr in decay)  # warm-up may start below the floor
    assert lrs[total] == pytest.approx(min_lr)
    if warmup > 0:
        assert lrs[warmup - 1] == pytest.approx(max_lr)


def test_zero_warmup_is_pytorch_cosine_annealing() -> None:
    """With no warm-up the curve is CosineAnnealingLR's (computed by PyTorch, a different code)."""
    total, max_lr, min_lr = 50, 0.1, 0.004
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=min_lr)
    for t in range(total + 1):
        ours = warmup_cosine(t, warmup_steps=0, total_steps=total, max_lr=max_lr, min_lr=min_lr)
        assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        ref.step()


@pytest.mark.parametrize(("warmup", "total", "ratio"), [(0, 7, 0.0), (5, 40, 0.1), (40, 40, 0.5)])
def test_scheduler_equals_function(warmup: int, total: int, ratio: float) -> None:
    p = torch.zeros(3, requires_grad=True)
    opt = torch.optim.AdamW([{"params": [p], "lr": 1e-3}, {"params": [], "lr": 5e-2}])
    sched = warmup_cosine_scheduler(opt, warmup_steps=warmup, total_steps=total, min_lr_ratio=ratio)
    for t in range(total + 3):
        for group, peak in zip(opt.param_groups, (1e-3, 5e-2), strict=True):
            expected = warmup_cosine(
                t, warmup_steps=warmup, total_steps=total, max_lr=peak, min_lr=ratio * peak
            )
            assert group["lr"] == pytest.approx(expected, rel=1e-12)
        p.grad = torch.ones_like(p)
        opt.step()
        sched.step()


def test_scheduler_state_dict_resumes() -> None:
    def make() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
        return opt, warmup_cosine_scheduler(opt, warmup_steps=4, total_steps=30)

    opt, sched = make()
    for _ in range(11):
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert state["lr_lambdas"][0] == {"warmup_steps": 4, "total_steps": 30, "min_lr_ratio": 0.1}
    opt2, sched2 = make()
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(state)
    for _ in range(25):
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step": -1}, "step must be >= 0"),
        ({"step": 1.5}, "step must be an int"),
        ({"warmup_steps": -2}, "warmup_steps must be >= 0"),
        ({"total_steps": 0}, "total_steps must be >= 1"),
        ({"warmup_steps": 11}, "must not exceed total_steps"),
        ({"max_lr": 0.0}, "max_lr"),
        ({"max_lr": math.inf}, "max_lr"),
        ({"min_lr": -1e-3}, "min_lr"),
        ({"min_lr": 2.0}, "min_lr"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"step": 0, "warmup_steps": 2, "total_steps": 10, "max_lr": 1.0, "min_lr": 0.1}
    args.update(kwargs)
    step = args.pop("step")
    with pytest.raises(ValueError, match=match):
        warmup_cosine(step, **args)


def test_scheduler_bad_arguments() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        warmup_cosine_scheduler(opt, warmup_steps=1, total_steps=10, min_lr_ratio=1.5)
    with pytest.raises(ValueError, match="must not exceed"):
        warmup_cosine_scheduler(opt, warmup_steps=20, total_steps=10)
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        warmup_cosine_scheduler(opt, warmup_steps=-1, total_steps=10)
