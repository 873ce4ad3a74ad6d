"""Reading GGUF files (llama.cpp's format for quantised models) into PyTorch tensors.

A GGUF file holds three things, in this order: a header (magic ``GGUF``, version, counts),
key/value **metadata** (architecture, hyper-parameters, the tokenizer's vocabulary, merges and
chat template) and **tensors**, each stored in its own type: ``F32``, ``F16``, or a block
quantisation such as ``Q8_0`` or ``Q4_1`` (blocks of 32 weights sharing a scale, and for
``Q4_1`` a minimum too). The parsing and the de-quantisation are done by the ``gguf`` package
(llama.cpp's own Python reader); this module wraps it so that a foreign or damaged file gets one
clear error, and so that tensors come out as float32 PyTorch tensors in PyTorch's shape order
(GGUF lists dimensions fastest-first: a ``(out, in)`` weight appears as ``[in, out]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlbook.data.optional import MissingDependencyError

__all__ = ["GGUFError", "GGUFFile"]


class GGUFError(ValueError):
    """The file is not a readable GGUF file, or not the model its loader expects."""


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - gguf is a declared dependency of the hub
        raise MissingDependencyError(
            "reading GGUF files needs the 'gguf' package; run: pip install gguf"
        ) from e
    return gguf


class GGUFFile:
    """A GGUF file opened for reading (memory-mapped: tensors are read only when asked for).

    Args:
        path: the ``.gguf`` file.

    Attributes:
        path: the file.
        metadata: every key/value pair of the header, as Python values (``str``, ``int``,
            ``float``, ``bool`` or lists of them).
        shapes: tensor name → shape in PyTorch order (slowest dimension first).
        types: tensor name → storage type name (``"F32"``, ``"Q4_1"``, ``"Q8_0"``, ...).

    Raises:
        FileNotFoundError: no file at ``path``.
        GGUFError: the file is not GGUF, or is truncated or corrupt (the message says so).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no GGUF file at {self.path}")
        gguf = _gguf()
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise GGUFError(
                f"{self.path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
                "pass the path of a .gguf model file"
            )
        try:
            reader = gguf.GGUFReader(self.path, "r")
            self.metadata: dict[str, Any] = {
                name: field.contents() for name, field in reader.fields.items()
            }
            self.shapes: dict[str, tuple[int, ...]] = {
                t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors
            }
            self.types: dict[str, str] = {t.name: t.tensor_type.name for t in reader.tensors}
            self._tensors = {t.name: t for t in reader.tensors}
        except (ValueError, IndexError, KeyError, OSError, UnicodeDecodeError, TypeError) as e:
            raise GGUFError(
                f"{self.path} is a damaged GGUF file ({type(e).__name__}: {e}); reinstall the "
                "package that ships it or pass an intact copy"
            ) from e
        self._reader = reader

    def require(self, key: str) -> Any:
        """The metadata value under ``key``; :class:`GGUFError` naming the key if it is absent."""
        if key not in self.metadata:
            raise GGUFError(f"{self.path.name} has no metadata key {key!r}; is it the right model?")
        return self.metadata[key]

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name``, de-quantised to float32, in PyTorch shape order (e.g. a linear
        layer's weight ``(out_features, in_features)``)."""
        if name not in self._tensors:
            raise GGUFError(f"{self.path.name} has no tensor {name!r}")
        t = self._tensors[name]
        gguf = _gguf()
        try:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
        except (ValueError, NotImplementedError) as e:
            raise GGUFError(f"cannot de-quantise {name!r} ({t.tensor_type.name}): {e}") from e
        # a copy: F32 tensors come back as read-only views of the memory-mapped file
        array = np.array(values, dtype=np.float32, copy=True).reshape(self.shapes[name])
        return torch.from_numpy(array)

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes/values of tensor ``name`` as the ``gguf`` package maps them (for a
        block-quantised type, one row of ``uint8`` per output row)."""
        if name not in self._tensors:
            raise GGUFError(f"{self.path.name} has no tensor {name!r}")
        return np.asarray(self._tensors[name].data)

    def __repr__(self) -> str:
        arch = self.metadata.get("general.architecture", "?")
        return f"GGUFFile({self.path.name!r}, architecture={arch!r}, tensors={len(self.shapes)})"
