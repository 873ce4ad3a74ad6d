"""Language-modelling data on disk: token ids in a memory-mapped file, split by position,
sampled as random windows (section 4.3).

A tokenized corpus is written **once** to a flat binary file of unsigned integers
(:func:`write_tokens`) and read back as a ``numpy.memmap`` (:func:`read_tokens`): the operating
system pages in only the parts that are touched, so a corpus far larger than memory costs
nothing to open. Shapes use ``N`` for the length of a token stream, ``B`` batch, ``T`` window.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dlbook.checkpoint import atomic_write
from dlbook.data.text import window_starts

__all__ = ["read_tokens", "sample_windows", "split_tokens", "token_dtype", "write_tokens"]

_META_SUFFIX = ".json"


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids ``0 .. vocab_size - 1`` (uint8/16/32)."""
    if isinstance(vocab_size, bool) or int(vocab_size) != vocab_size or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"vocab_size={vocab_size} does not fit in 32 bits")


def write_tokens(
    path: str | os.PathLike[str],
    ids: Sequence[int] | np.ndarray | torch.Tensor,
    vocab_size: int,
) -> Path:
    """Write the token stream ``ids (N,)`` to ``path`` as raw unsigned integers.

    The dtype is :func:`token_dtype` of ``vocab_size``; a small JSON file ``path + ".json"``
    records dtype, length and vocabulary size so that :func:`read_tokens` can check the file.
    Both files are written atomically (:func:`dlbook.checkpoint.atomic_write`), so an
    interrupted write never leaves a file that looks complete.

    Raises:
        ValueError: an empty stream, a stream that is not 1-D, or ids outside ``[0, vocab_size)``.
    """
    arr = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be a 1-D token stream, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("cannot write an empty token stream (is the corpus empty?)")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    dtype = token_dtype(vocab_size)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got min {lo}, max {hi}")

    def write_ids(tmp: Path) -> None:
        mm = np.memmap(tmp, dtype=dtype, mode="w+", shape=(arr.size,))
        mm[:] = arr
        mm.flush()
        del mm

    # Old metadata out, the ids in, then the metadata that declares them complete: a crash in
    # between leaves ids without metadata, which read_tokens refuses, never a file that looks
    # whole but is not.
    path = Path(path)
    meta_path = path.with_name(path.name + _META_SUFFIX)
    meta_path.unlink(missing_ok=True)
    atomic_write(path, write_ids)
    meta = {"dtype": dtype.name, "length": int(arr.size), "vocab_size": int(vocab_size)}
    atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta)))
    return path


def read_tokens(path: str | os.PathLike[str]) -> np.memmap:
    """Open a token file written by :func:`write_tokens` as a read-only ``(N,)`` memmap.

    Raises:
        FileNotFoundError: the file or its ``.json`` description is missing.
        ValueError: the file's size does not match its description (truncated or replaced).
    """
    path = Path(path)
    meta_path = path.with_name(path.name + _META_SUFFIX)
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"no token file at {path} (with {meta_path.name}); write_tokens it")
    try:
        meta = json.loads(meta_path.read_text())
        dtype, length = np.dtype(meta["dtype"]), int(meta["length"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{meta_path} is not a valid token-file description: {e}") from e
    size = path.stat().st_size
    if size != length * dtype.itemsize:
        raise ValueError(
            f"{path} has {size} bytes, but its description promises {length} tokens of "
            f"{dtype.name} ({length * dtype.itemsize} bytes); the file is truncated or stale"
        )
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))


def split_tokens(
    data: np.ndarray, val_fraction: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Split a stream ``(N,)`` by position: the first ``1 - val_fraction`` for training, the
    rest for validation. Both parts are views (no copy of a memmap)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(data)
    cut = int(round(n * (1.0 - val_fraction)))
    if cut < 2 or n - cut < 2:
        raise ValueError(f"a stream of {n} tokens is too short to split at {val_fraction}")
    return data[:cut], data[cut:]


def sample_windows(
    data: np.ndarray,
    block_size: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``batch_size`` random windows from a (memory-mapped) stream ``data (N,)``.

    The start positions are drawn exactly as :func:`dlbook.data.text.random_windows` draws
    them (``torch.randint(0, N - T, (B,), generator=generator)``), so both give the same batch
    for the same generator state; only the ``B (T + 1)`` tokens that are needed are read.

    Returns:
        ``(x, y)``, both ``(B, T)`` int64 on ``device``, with ``y[:, t] == x[:, t + 1]``.
    """
    if getattr(data, "ndim", None) != 1:
        raise ValueError("data must be a 1-D token stream (numpy array or memmap)")
    starts = window_starts(len(data), block_size, batch_size, generator).numpy()
    windows = np.stack([np.asarray(data[s : s + block_size + 1]) for s in starts])
    windows = torch.from_numpy(windows.astype(np.int64))
    return windows[:, :-1].to(device), windows[:, 1:].to(device)
