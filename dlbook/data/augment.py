"""Data augmentation for small images (sections 2.5 and 3.2): random shifts with zero fill."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from dlbook.config import check_int

__all__ = ["RandomShift", "shift_image"]


def shift_image(image: torch.Tensor, dr: int, dc: int) -> torch.Tensor:
    """Shift ``image (..., H, W)`` down by ``dr`` rows and right by ``dc`` columns (negative:
    up/left), filling the uncovered border with zeros (the background); same shape out.

    ``out[..., r, c] = image[..., r - dr, c - dc]`` where that pixel exists, else 0.
    """
    if image.dim() < 2:
        raise ValueError(f"expected an image (..., H, W), got shape {tuple(image.shape)}")
    h, w = image.shape[-2:]
    out = torch.zeros_like(image)
    if abs(dr) >= h or abs(dc) >= w:
        return out
    rows_src, rows_dst = slice(max(0, -dr), h - max(0, dr)), slice(max(0, dr), h - max(0, -dr))
    cols_src, cols_dst = slice(max(0, -dc), w - max(0, dc)), slice(max(0, dc), w - max(0, -dc))
    out[..., rows_dst, cols_dst] = image[..., rows_src, cols_src]
    return out


class RandomShift(Dataset):
    """Wrap a data set of ``(image, label)`` pairs; every time example ``i`` is drawn its image
    comes back shifted by a random ``(dr, dc)`` in ``[-max_shift, max_shift]²`` (zero fill).

    Args:
        base: the data set; its images are ``(..., H, W)``, or flat vectors with
            ``image_shape=(H, W)`` given (they come back flat again).
        max_shift: largest shift in pixels along each axis.
        image_shape: ``(H, W)`` of flattened images; ``None`` for images that have their shape.
        generator: random generator for the shifts (default: PyTorch's global one, which the
            trainer's seed fixes).
    """

    def __init__(
        self,
        base: Dataset,
        max_shift: int = 1,
        image_shape: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        check_int("max_shift", max_shift, low=0)
        if image_shape is not None and len(image_shape) != 2:
            raise ValueError(f"image_shape must be (H, W), got {image_shape!r}")
        self.base, self.max_shift, self.generator = base, max_shift, generator
        self.image_shape = tuple(image_shape) if image_shape is not None else None

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[i]
        m = self.max_shift
        dr, dc = torch.randint(-m, m + 1, (2,), generator=self.generator).tolist()
        image = x.reshape(*x.shape[:-1], *self.image_shape) if self.image_shape else x
        return shift_image(image, dr, dc).reshape(x.shape), y
