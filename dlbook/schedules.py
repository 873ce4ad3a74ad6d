"""Learning-rate schedules.

The schedule the book trains its larger models with is a linear **warm-up** followed by a
**cosine decay** to a floor: :func:`warmup_cosine` gives the learning rate at any step as a pure
function, and :func:`warmup_cosine_scheduler` wraps the same curve as a PyTorch scheduler that
multiplies each parameter group's initial learning rate.
"""

from __future__ import annotations

import math

import torch

__all__ = ["warmup_cosine", "warmup_cosine_scheduler"]


def _check_steps(warmup_steps: int, total_steps: int) -> None:
    for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps > total_steps:
        raise ValueError(
            f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})"
        )


def warmup_cosine(
    step: int, *, warmup_steps: int, total_steps: int, max_lr: float, min_lr: float
) -> float:
    """Learning rate at optimizer step ``step`` (counted from 0) of a warm-up + cosine schedule.

    * Warm-up, ``0 <= step < warmup_steps``: rises linearly,
      ``max_lr * (step + 1) / warmup_steps``, so the first step already moves the weights and
      step ``warmup_steps - 1`` uses ``max_lr``.
    * Decay, ``warmup_steps <= step < total_steps``: half a cosine from ``max_lr`` down towards
      ``min_lr``, ``min_lr + (max_lr - min_lr) * (1 + cos(pi * p)) / 2`` with
      ``p = (step - warmup_steps) / (total_steps - warmup_steps)``.
    * ``step >= total_steps``: ``min_lr`` (the floor; training past the planned end is safe).

    With ``warmup_steps=0`` this is the plain cosine schedule of ``CosineAnnealingLR``.

    Args:
        step: the optimizer step, ``>= 0``.
        warmup_steps: length of the warm-up, ``0 <= warmup_steps <= total_steps``.
        total_steps: the step at which the schedule reaches ``min_lr``, ``>= 1``.
        max_lr: the peak learning rate, ``> 0``.
        min_lr: the floor, ``0 <= min_lr <= max_lr``.

    Raises:
        ValueError: on a negative or non-integer step, bad step counts or learning rates.
    """
    _check_steps(warmup_steps, total_steps)
    if isinstance(step, bool) or not isinstance(step, int):
        raise ValueError(f"step must be an int, got {step!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not (math.isfinite(max_lr) and max_lr > 0):
        raise ValueError(f"max_lr must be a finite number > 0, got {max_lr}")
    if not (math.isfinite(min_lr) and 0 <= min_lr <= max_lr):
        raise ValueError(f"min_lr must satisfy 0 <= min_lr <= max_lr ({max_lr}), got {min_lr}")
    if step >= total_steps:
        return float(min_lr)
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that follows :func:`warmup_cosine` for every parameter group.

    Each group's peak is the learning rate it has when the scheduler is created; its floor is
    ``min_lr_ratio`` times that. Call ``scheduler.step()`` once after every ``optimizer.step()``:
    the learning rate of optimizer step ``t`` is then ``warmup_cosine(t, ..., max_lr=lr,
    min_lr=min_lr_ratio * lr)``. The state (``state_dict``) holds only numbers, so the
    scheduler checkpoints and resumes like any other.

    Args:
        optimizer: the optimizer whose learning rates to schedule.
        warmup_steps: length of the warm-up, ``0 <= warmup_steps <= total_steps``.
        total_steps: the step at which the floor is reached, ``>= 1``.
        min_lr_ratio: floor as a fraction of the peak, in ``[0, 1]``.

    Raises:
        ValueError: on bad step counts or a ratio outside ``[0, 1]``.
    """
    _check_steps(warmup_steps, total_steps)
    if not (math.isfinite(min_lr_ratio) and 0.0 <= min_lr_ratio <= 1.0):
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    factor = _WarmupCosineFactor(warmup_steps, total_steps, float(min_lr_ratio))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _WarmupCosineFactor:
    """The multiplier ``warmup_cosine(step, max_lr=1, min_lr=ratio)``, as a picklable object.

    ``LambdaLR.state_dict`` stores the ``__dict__`` of callable objects (not of plain
    functions), so the schedule's settings travel with a checkpoint.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int) -> float:
        return warmup_cosine(
            int(step),
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            max_lr=1.0,
            min_lr=self.min_lr_ratio,
        )
