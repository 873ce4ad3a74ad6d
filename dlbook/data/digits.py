"""scikit-learn's bundled handwritten digits (1,797 images of 8×8 pixels), ready for PyTorch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dlbook.data.optional import require


@dataclass
class Splits:
    """Train/validation/test splits of a classification data set.

    Each split is a ``TensorDataset`` of ``(x, y)`` with ``x`` float32 ``(n, features)`` and ``y``
    int64 ``(n,)``.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    image_shape: tuple[int, int]


def load_digits(val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """Load the digits, scale pixels to [0, 1] and split them, stratified by class.

    The split depends only on ``seed``, so every chapter sees the same test images.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum below 1")
    datasets = require("sklearn.datasets", "scikit-learn", "the digits data set")
    bunch = datasets.load_digits()
    x = (bunch.data / 16.0).astype(np.float32)  # pixel intensities are 0..16
    y = bunch.target.astype(np.int64)
    return stratified_splits(
        x, y, test_size=test_fraction, val_size=val_fraction / (1 - test_fraction), seed=seed,
        num_classes=10, image_shape=(8, 8),
    )


def stratified_splits(
    x: np.ndarray,
    y: np.ndarray,
    *,
    test_size: float | int,
    val_size: float | int,
    seed: int,
    num_classes: int,
    image_shape: tuple[int, int],
) -> Splits:
    """Split ``x (n, ...)``, ``y (n,)`` into train/validation/test with the same share of every
    class in each: first ``test_size`` off the whole, then ``val_size`` off the rest (a fraction
    of what it splits, or a count, as in scikit-learn's ``train_test_split``). The tensors are
    copies, so read-only inputs are fine."""
    model_selection = require("sklearn.model_selection", "scikit-learn", "splitting data")
    x_rest, x_test, y_rest, y_test = model_selection.train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = model_selection.train_test_split(
        x_rest, y_rest, test_size=val_size, stratify=y_rest, random_state=seed
    )

    def as_dataset(a: np.ndarray, b: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.tensor(a), torch.tensor(b))

    return Splits(
        train=as_dataset(x_train, y_train),
        val=as_dataset(x_val, y_val),
        test=as_dataset(x_test, y_test),
        num_classes=num_classes,
        image_shape=image_shape,
    )
