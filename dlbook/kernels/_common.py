"""Input checks shared by the kernels' Python wrappers."""

from __future__ import annotations

import torch

#: The dtypes the kernels accept; they compute in float32 and return the input's dtype.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(x: object, name: str, *, ndim: int | None = None, min_ndim: int = 1) -> None:
    """Raise ``ValueError`` unless ``x`` is a contiguous float32/16/bf16 tensor of the right rank.

    The kernels index memory by hand with the tensor's strides, so a non-contiguous view would
    be read wrongly; the wrappers refuse it instead of copying silently.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got {x.ndim}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")


def is_power_of_two(n: int) -> bool:
    """``True`` for 1, 2, 4, 8, ...: Triton's ``tl.arange`` needs block sizes of this form."""
    return n > 0 and n & (n - 1) == 0


#: Bytes of one row that the one-block-per-row kernels (softmax, layer norm) accept, as in
#: Triton's layer-norm tutorial: a row of ``N`` elements is held in one block of
#: ``next_power_of_2(N)`` lanes, and wider blocks spill out of registers or fail to compile.
MAX_ROW_BYTES = 65536


def check_row_width(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` when ``x``'s last dimension does not fit in one block.

    The bound is ``65536 // x.element_size()`` elements (16,384 in float32, 32,768 in
    float16/bfloat16).
    """
    limit = MAX_ROW_BYTES // x.element_size()
    if x.shape[-1] > limit:
        raise ValueError(
            f"{name}'s last dimension {x.shape[-1]} is too wide: the kernel holds one row in one "
            f"block, at most {limit} elements in {x.dtype} ({MAX_ROW_BYTES} bytes)"
        )


def check_devices(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` unless the tensors share one device that the kernels can use.

    Compiled kernels (a CUDA GPU, ``TRITON_INTERPRET`` unset) need CUDA tensors; a CPU tensor
    would otherwise fail deep inside Triton with an obscure message.
    """
    from dlbook.kernels import INTERPRETED  # here: the package imports this module

    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {d}" for name, d in devices.items())
        raise ValueError(f"the inputs must be on one device, got {listed}")
    device = next(iter(devices.values()))
    if not INTERPRETED and device.type != "cuda":
        raise ValueError(
            f"the kernels are compiled for the GPU here, so the inputs must be CUDA tensors, "
            f"got {device} (move them with .cuda(), or set TRITON_INTERPRET=1 before importing "
            f"dlbook.kernels to run them on the CPU in Triton's interpreter)"
        )
