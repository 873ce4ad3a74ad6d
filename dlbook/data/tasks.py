"""Generated instruction tasks with verifiable answers (sections 5.6-5.8).

No offline instruction-tuning set ships in a package, so the book generates one: short
questions whose correct answer a program can check exactly. Four families:

* ``add``: two-digit addition, ``"What is 47 + 38? Answer with the number only."`` → ``"85"``;
* ``sort``: four numbers below 100 in increasing order → ``"7, 17, 40, 49"``;
* ``convert``: a unit conversion by a factor of 10, 24, 60, 100 or 1000 → ``"3500"``;
* ``larger``: the larger of two numbers → ``"74"``.

Every family asks for the bare answer, which SmolLM2-135M-Instruct rarely gives: it explains
instead (section 5.6 measures it). The split into training and held-out questions is by a hash
of the question's text, so it is the same for every seed and no held-out question can appear
in training data.

Example:
    >>> train = make_tasks(100, "train", seed=0)
    >>> train[0].family in FAMILIES and exact_match(train[0], train[0].answer)
    True
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

FAMILIES = ("add", "sort", "convert", "larger")
SPLITS = ("train", "test")
#: One question in ``HELD_OUT_EVERY`` (by hash of its text) belongs to the test split.
HELD_OUT_EVERY = 4

_UNITS = (  # (from, to, factor)
    ("kilometres", "metres", 1000),
    ("kilograms", "grams", 1000),
    ("metres", "centimetres", 100),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("centimetres", "millimetres", 10),
    ("litres", "millilitres", 1000),
    ("days", "hours", 24),
)


@dataclass(frozen=True)
class Task:
    """One question: its ``prompt`` (the user's message), the exact ``answer`` and ``family``."""

    prompt: str
    answer: str
    family: str


def _add(rng: random.Random) -> Task:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return Task(f"What is {a} + {b}? Answer with the number only.", str(a + b), "add")


def _sort(rng: random.Random) -> Task:
    xs = rng.sample(range(1, 100), 4)
    listed = ", ".join(map(str, xs))
    return Task(
        f"Sort these numbers from smallest to largest: {listed}. Answer with the sorted list "
        "only.", ", ".join(map(str, sorted(xs))), "sort",
    )


def _convert(rng: random.Random) -> Task:
    source, target, factor = rng.choice(_UNITS)
    n = rng.randint(2, 199)
    return Task(
        f"Convert {n} {source} to {target}. Answer with the number only.", str(n * factor),
        "convert",
    )


def _larger(rng: random.Random) -> Task:
    a, b = rng.sample(range(10, 1000), 2)
    return Task(f"Which is larger, {a} or {b}? Answer with the number only.", str(max(a, b)),
                "larger")


_MAKERS: dict[str, Callable[[random.Random], Task]] = {
    "add": _add, "sort": _sort, "convert": _convert, "larger": _larger,
}


def split_of(prompt: str) -> str:
    """``"test"`` for one prompt in :data:`HELD_OUT_EVERY` (by CRC-32 of its text), else
    ``"train"``: a fixed partition of all possible questions."""
    return "test" if zlib.crc32(prompt.encode()) % HELD_OUT_EVERY == 0 else "train"


def make_tasks(
    n: int, split: str, seed: int = 0, families: Sequence[str] = FAMILIES
) -> list[Task]:
    """``n`` distinct tasks of ``split`` (``"train"`` or ``"test"``), the families taking turns.

    Raises:
        ValueError: unknown split or family, ``n < 0``, or fewer than ``n`` distinct questions
            exist in the split (the families are finite).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    unknown = [f for f in families if f not in _MAKERS]
    if unknown or not families:
        raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {families!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    rng = random.Random(f"{split}-{seed}")
    tasks: list[Task] = []
    seen: set[str] = set()
    attempts = 0
    while len(tasks) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise ValueError(f"could not find {n} distinct {split} tasks in {families}")
        task = _MAKERS[families[len(tasks) % len(families)]](rng)
        if task.prompt in seen or split_of(task.prompt) != split:
            continue
        seen.add(task.prompt)
        tasks.append(task)
    return tasks


def exact_match(task: Task, completion: str) -> float:
    """``1.0`` if the completion, stripped of surrounding white space, is exactly the answer,
    else ``0.0``: the task metric of sections 5.6-5.8."""
    return float(completion.strip() == task.answer)


_WELL_FORMED = re.compile(r"\d+(, \d+)*")


def well_formed(completion: str) -> bool:
    """Whether the completion is a bare number or a comma-separated list of numbers: the form
    every family asks for, right or wrong."""
    return _WELL_FORMED.fullmatch(completion.strip()) is not None


def reward(task: Task, completion: str, format_bonus: float = 0.1) -> float:
    """The rule-based reward of section 5.8: ``1`` for the exact answer, ``format_bonus`` for a
    wrong answer in the asked-for form (a bare number or list), ``0`` otherwise."""
    if exact_match(task, completion):
        return 1.0
    return format_bonus if well_formed(completion) else 0.0
