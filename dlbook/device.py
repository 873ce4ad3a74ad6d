"""Device and precision choice: one place that knows about CUDA, Apple MPS and the CPU."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch

AmpMode = Literal["auto", "bf16", "fp16", "off"]
DEVICE_ENV = "DLBOOK_DEVICE"


def get_device(prefer: str | None = None) -> torch.device:
    """Pick the best available device: CUDA, then Apple MPS, then the CPU.

    ``prefer`` (or the environment variable ``DLBOOK_DEVICE``) forces a device, e.g. ``"cpu"`` to
    reproduce CPU numbers on a GPU machine.

    Raises:
        ValueError: the requested device is not a device name, or not available here.
    """
    name = (prefer or os.environ.get(DEVICE_ENV) or "").strip()
    if name:
        source = "requested" if prefer else f"requested by {DEVICE_ENV}"
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise ValueError(
                f"device {name!r} ({source}) is not a device name; use cpu, cuda, cuda:N or mps"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} was {source} but CUDA is not available here; use cpu"
            )
        if device.type == "cuda" and device.index is not None:
            if device.index >= torch.cuda.device_count():
                raise ValueError(
                    f"device {name!r} was {source} but this machine has "
                    f"{torch.cuda.device_count()} CUDA device(s)"
                )
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r} was {source} but MPS is not available here; use cpu")
        if device.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device {name!r} ({source}) is not supported; use cpu, cuda or mps")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def amp_dtype(device: torch.device, mode: AmpMode = "auto") -> torch.dtype | None:
    """The autocast dtype to train with on ``device``, or ``None`` for plain float32.

    ``auto`` means bfloat16 on a CUDA GPU that supports it, float16 on an older CUDA GPU, and
    float32 elsewhere (CPU autocast is correct but rarely faster on laptop CPUs).
    """
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    if mode != "auto":
        raise ValueError(f"amp mode must be 'auto', 'bf16', 'fp16' or 'off', not {mode!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for ``device`` and ``dtype``; does nothing when ``dtype`` is ``None``."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def describe(device: torch.device) -> str:
    """A one-line, human-readable name for ``device`` (the GPU model for CUDA)."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type
