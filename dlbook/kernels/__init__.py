"""GPU kernels written in Triton (section 6.7): fused softmax, layer norm, FlashAttention forward.

Importing this package decides, in one place, how the kernels run:

* with a CUDA GPU, Triton compiles them to GPU code, as it would for any user;
* without one, it sets ``TRITON_INTERPRET=1`` **before** Triton is imported, so every
  ``@triton.jit`` kernel runs in Triton's interpreter on CPU tensors (numpy under the hood). The
  interpreter executes the same kernel source program by program; it is slow and is for checking
  correctness, never for timing. An explicit ``TRITON_INTERPRET`` in the environment is respected.

The variable should be set before the first ``import triton`` in the process: Triton builds its
own helpers (``tl.max``, ``tl.sum``, ...) at import time. When Triton was imported earlier (e.g.
by ``torch.compile`` checking for it), this package converts those helpers for the interpreter.

Triton is an optional dependency: ``pip install dlbook[kernels]``. Triton publishes wheels for
Linux only; on macOS or Windows use Linux, WSL or a hosted notebook such as Colab.
"""

from __future__ import annotations

import os
import sys

import torch

_ALREADY_IMPORTED = "triton" in sys.modules
if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"
else:
    _ALREADY_IMPORTED = False  # a GPU, or the user chose: nothing to repair

try:
    import triton  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "dlbook.kernels needs Triton, an optional dependency: pip install 'dlbook[kernels]'. "
        "Triton ships wheels for Linux only: on macOS or Windows, use Linux, WSL or Colab."
    ) from e


def _interpret_triton_stdlib() -> None:
    """Make Triton's own ``@jit`` helpers (``tl.max``, ``tl.sum``, ``tl.zeros``, ...) callable
    in the interpreter when ``triton`` was imported before ``TRITON_INTERPRET`` was set (for
    instance by ``torch.compile``'s check for Triton): they were built as compiler functions,
    which the interpreter refuses to call. Only done without CUDA, where nothing can compile."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    for module in (tl, tl.standard, tl.random):
        for name, obj in list(vars(module).items()):
            if isinstance(obj, JITFunction):
                setattr(module, name, InterpretedFunction(obj.fn))


if _ALREADY_IMPORTED:
    _interpret_triton_stdlib()

#: Whether the kernels run in Triton's CPU interpreter (no CUDA device, or TRITON_INTERPRET=1).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

from dlbook.kernels.flash import flash_attention  # noqa: E402
from dlbook.kernels.layernorm import LayerNormFunction, layer_norm  # noqa: E402
from dlbook.kernels.softmax import softmax  # noqa: E402

__all__ = ["INTERPRETED", "LayerNormFunction", "flash_attention", "layer_norm", "softmax"]
