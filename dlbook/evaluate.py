"""Evaluating a chat model on tasks with checkable answers (sections 5.6-5.8).

:func:`generate_batch` answers many prompts at once with the key/value cache. Prompts of
different lengths would need padding, which the cached path does not support; instead they are
grouped by length and each group is decoded as one batch (with the templated questions of
:mod:`dlbook.data.tasks`, a few lengths cover them all). :func:`evaluate` scores the
completions with a checker and reports the mean with a 95 % confidence interval.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from dlbook.config import check_int


def stop_token(tokenizer) -> int:
    """The id of SmolLM2's end-of-turn token ``<|im_end|>``, which ends every answer."""
    return tokenizer.encode("<|im_end|>", allowed_special="all")[0]


def prompt_ids(tokenizer, task) -> list[int]:
    """The task's question as a user turn in the chat template, ready for the answer."""
    return list(tokenizer.apply_chat_template(
        [{"role": "user", "content": task.prompt}], add_generation_prompt=True, tokenize=True
    ))


@torch.no_grad()
def generate_batch(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_token: int,
    *,
    temperature: float = 0.0,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Complete every prompt (lists of ids) → the new ids of each, without the stop token.

    Prompts are grouped by length and each group is decoded in batches of ``batch_size`` with
    :meth:`dlbook.nn.GPT.generate` (greedy for ``temperature=0``). The result is in the order
    of ``prompts``.

    Raises:
        ValueError: no prompts, an empty prompt, or a bad ``max_new_tokens``/``batch_size``.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("need at least one prompt, and no empty prompt")
    check_int("max_new_tokens", max_new_tokens, low=1)
    check_int("batch_size", batch_size, low=1)
    device = next(model.parameters()).device
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[len(p)].append(i)
    out: list[list[int]] = [[] for _ in prompts]
    for length, members in sorted(by_length.items()):
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            idx = torch.tensor([list(prompts[i]) for i in chunk], device=device)
            full = model.generate(
                idx, max_new_tokens, temperature=temperature, stop_tokens=[stop_token],
                generator=generator,
            )
            for row, i in enumerate(chunk):
                new = full[row, length:].tolist()
                out[i] = new[: new.index(stop_token)] if stop_token in new else new
    return out


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n`` (95 % for ``z = 1.96``); unlike
    the normal approximation it stays inside [0, 1] and is sensible at 0 % and 100 %."""
    if n < 1:
        raise ValueError("need n >= 1")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends, not rounding
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass
class EvalResult:
    """Scores of one evaluation: ``mean`` with a 95 % interval ``[low, high]`` over ``n``
    prompts; ``completions`` and ``scores`` in the order of the tasks; ``by_family`` means."""

    mean: float
    low: float
    high: float
    n: int
    completions: list[str] = field(repr=False)
    scores: list[float] = field(repr=False)
    by_family: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.mean:.1%} (95% CI {self.low:.1%}-{self.high:.1%}, n={self.n})"


def mean_interval(scores: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Wilson interval when every score is 0 or 1, else the normal
    approximation ``mean ± z · s / sqrt(n)``."""
    n = len(scores)
    if n == 0:
        raise ValueError("no scores")
    mean = sum(scores) / n
    if all(s in (0.0, 1.0) for s in scores):
        return (mean, *wilson_interval(sum(scores), n, z))
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / max(n - 1, 1))
    return mean, mean - z * sd / math.sqrt(n), mean + z * sd / math.sqrt(n)


def evaluate(
    model,
    tokenizer,
    tasks: Sequence,
    checker: Callable[[object, str], float],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 64,
) -> EvalResult:
    """Answer each task's ``prompt`` greedily in the chat template and score it with
    ``checker(task, completion)``.

    Raises:
        ValueError: no tasks.
    """
    if not tasks:
        raise ValueError("no tasks to evaluate")
    prompts = [prompt_ids(tokenizer, t) for t in tasks]
    new = generate_batch(model, prompts, max_new_tokens, stop_token(tokenizer),
                         batch_size=batch_size)
    completions = [tokenizer.decode(ids) for ids in new]
    scores = [float(checker(t, c)) for t, c in zip(tasks, completions, strict=True)]
    mean, low, high = mean_interval(scores)
    families: dict[str, list[float]] = defaultdict(list)
    for t, s in zip(tasks, scores, strict=True):
        families[getattr(t, "family", "all")].append(s)
    by_family = {f: sum(v) / len(v) for f, v in sorted(families.items())}
    return EvalResult(mean, low, high, len(tasks), completions, scores, by_family)
