"""Tests of dlbook.data.augment: the zero-fill shift and the random-shift data set."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from dlbook.data.augment import RandomShift, shift_image


def test_shift_image_moves_pixels_and_fills_zeros():
    img = torch.arange(1, 17, dtype=torch.float32).reshape(4, 4)
    assert torch.equal(shift_image(img, 0, 0), img)
    down = shift_image(img, 1, 0)
    assert torch.equal(down[1:], img[:-1]) and down[0].sum() == 0
    left = shift_image(img, 0, -2)
    assert torch.equal(left[:, :2], img[:, 2:]) and left[:, 2:].sum() == 0
    assert shift_image(img, 4, 0).sum() == 0  # shifted out entirely
    batch = torch.stack([img, 2 * img])[:, None]  # (2, 1, 4, 4): leading dims are kept
    assert torch.equal(shift_image(batch, 1, 1)[1, 0], shift_image(2 * img, 1, 1))
    with pytest.raises(ValueError, match="image"):
        shift_image(torch.zeros(4), 1, 1)


def test_random_shift_draws_shifts_within_range():
    img = torch.zeros(1, 7, 7)
    img[0, 3, 3] = 1.0  # one bright pixel in the middle
    data = RandomShift(TensorDataset(img[None].repeat(50, 1, 1, 1), torch.arange(50)),
                       max_shift=2, generator=torch.Generator().manual_seed(0))
    positions = set()
    for i in range(50):
        x, y = data[i]
        assert x.shape == (1, 7, 7) and y == i and x.sum() == 1
        r, c = divmod(int(x.flatten().argmax()), 7)
        assert abs(r - 3) <= 2 and abs(c - 3) <= 2
        positions.add((r, c))
    assert len(positions) > 10  # really random


def test_random_shift_of_flat_images():
    flat = torch.arange(64, dtype=torch.float32)[None]
    data = RandomShift(TensorDataset(flat, torch.zeros(1)), max_shift=0, image_shape=(8, 8))
    assert torch.equal(data[0][0], flat[0])  # flat in, flat out
    with pytest.raises(ValueError, match="max_shift"):
        RandomShift(TensorDataset(flat, torch.zeros(1)), max_shift=-1)
    with pytest.raises(ValueError, match="image_shape"):
        RandomShift(TensorDataset(flat, torch.zeros(1)), image_shape=(64,))
