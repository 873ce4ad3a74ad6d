"""Tests for dlbook.data.lm: memmap token files, positional split, window sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook.data.lm import read_tokens, sample_windows, split_tokens, token_dtype, write_tokens
from dlbook.data.text import random_windows


@pytest.mark.parametrize("vocab_size", [2, 256, 257, 65_536, 65_537])
def test_memmap_round_trip(tmp_path, vocab_size):
    rng = np.random.default_rng(vocab_size)
    ids = rng.integers(0, vocab_size, size=1000)
    ids[0] = vocab_size - 1
    path = write_tokens(tmp_path / "t.bin", ids, vocab_size)
    data = read_tokens(path)
    assert isinstance(data, np.memmap)
    assert data.dtype == token_dtype(vocab_size)
    assert path.stat().st_size == ids.size * data.dtype.itemsize
    np.testing.assert_array_equal(np.asarray(data), ids)


def test_token_dtype_is_smallest():
    assert token_dtype(256) == np.uint8
    assert token_dtype(257) == np.uint16
    assert token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32
    with pytest.raises(ValueError):
        token_dtype(0)


def test_write_accepts_tensor(tmp_path):
    ids = torch.tensor([3, 1, 2, 0])
    data = read_tokens(write_tokens(tmp_path / "a.bin", ids, 4))
    np.testing.assert_array_equal(data, [3, 1, 2, 0])


def test_write_rejects_bad_streams(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        write_tokens(tmp_path / "e.bin", [], 10)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        write_tokens(tmp_path / "r.bin", [1, 10], 10)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        write_tokens(tmp_path / "n.bin", [-1, 3], 10)
    with pytest.raises(ValueError, match="1-D"):
        write_tokens(tmp_path / "d.bin", [[1, 2]], 10)
    with pytest.raises(ValueError, match="integers"):
        write_tokens(tmp_path / "f.bin", [1.5], 10)


def test_read_detects_truncation_and_missing(tmp_path):
    path = write_tokens(tmp_path / "t.bin", np.arange(100), 300)  # uint16
    with open(path, "r+b") as f:
        f.truncate(150)
    with pytest.raises(ValueError, match="truncated"):
        read_tokens(path)
    with pytest.raises(FileNotFoundError):
        read_tokens(tmp_path / "missing.bin")


def test_split_by_position():
    data = np.arange(1000)
    train, val = split_tokens(data, 0.1)
    assert len(train) == 900 and len(val) == 100
    np.testing.assert_array_equal(np.concatenate([train, val]), data)
    assert train[-1] + 1 == val[0]
    with pytest.raises(ValueError):
        split_tokens(data, 0.0)
    with pytest.raises(ValueError):
        split_tokens(np.arange(3), 0.5)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 300),
    block=st.integers(1, 40),
    batch=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_windows_shift_and_bounds(n, block, batch, seed):
    if n < block + 1:
        with pytest.raises(ValueError, match="too short"):
            sample_windows(np.arange(n), block, batch)
        return
    data = np.arange(1000, 1000 + n)  # values encode positions
    x, y = sample_windows(data, block, batch, torch.Generator().manual_seed(seed))
    assert x.shape == y.shape == (batch, block) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    assert torch.equal(y, x + 1)  # consecutive positions of the stream
    assert int(x.min()) >= 1000 and int(y.max()) <= 1000 + n - 1  # inside the stream


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_windows_match_text_random_windows(tmp_path, seed):
    ids = torch.randint(0, 50, (500,), generator=torch.Generator().manual_seed(seed))
    data = read_tokens(write_tokens(tmp_path / "t.bin", ids, 50))
    a = sample_windows(data, 16, 5, torch.Generator().manual_seed(seed))
    b = random_windows(ids, 16, 5, torch.Generator().manual_seed(seed))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_windows_stay_inside_split():
    train, val = split_tokens(np.arange(2000), 0.25)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x, y = sample_windows(val, 32, 8, g)
        assert int(x.min()) >= 1500 and int(y.max()) < 2000
        x, y = sample_windows(train, 32, 8, g)
        assert int(y.max()) < 1500


def test_write_tokens_is_atomic(tmp_path, monkeypatch):
    import dlbook.checkpoint

    path = tmp_path / "ids.bin"
    write_tokens(path, [1, 2, 3], vocab_size=5)

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(dlbook.checkpoint.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_tokens(path, [4, 4, 4, 4], vocab_size=5)
    monkeypatch.undo()
    # the crash came before the new description was written: the stream is refused, not misread
    with pytest.raises(FileNotFoundError):
        read_tokens(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.bin"]  # no temporary left
    write_tokens(path, [4, 4, 4, 4], vocab_size=5)
    assert read_tokens(path).tolist() == [4, 4, 4, 4]
