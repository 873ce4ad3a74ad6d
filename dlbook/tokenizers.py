"""Byte-level byte-pair encoding (BPE), the tokenizer family of GPT-2 and its successors.

A :class:`ByteBPETokenizer` maps any Unicode string to a list of integer ids and back, exactly:

* ids ``0..255`` are the 256 possible bytes of the string's UTF-8 encoding, so no text is ever
  out of vocabulary;
* ids ``256..256+M-1`` are the ``M`` learned merges, in the order they were learned: merge ``i``
  joins the pair ``merges[i] = (a, b)`` into the new id ``256 + i``;
* the remaining ids are special tokens such as ``"<|endoftext|>"``, which are never produced
  from ordinary text and are matched verbatim only when the caller allows it.

Text is first cut into *pre-tokens* with GPT-2's regular expression (letters, digits,
punctuation and white space are kept apart, a leading space stays with the word that follows),
and merges never cross a pre-token boundary. Two consequences make both training and encoding
fast in pure Python:

* **training** counts each distinct pre-token once, weighted by how often it occurs, and after
  each merge updates the pair counts of only the pre-tokens that contain the merged pair;
* **encoding** caches the ids of every pre-token it has seen, so a word that occurs a thousand
  times is merged once.
"""

from __future__ import annotations

import heapq
import json
import numbers
import os
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import regex

from dlbook.checkpoint import atomic_write

#: GPT-2's pre-tokenization pattern (Radford et al., 2019): English contractions, runs of
#: letters, runs of digits, runs of other symbols (each optionally after one space), and white
#: space (a trailing run of spaces is left for the next word to take one of).
GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
FORMAT_NAME = "dlbook.ByteBPETokenizer"
FORMAT_VERSION = 1
_NO_RANK = 1 << 62


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Return ``ids`` with every non-overlapping occurrence of ``pair`` (left to right) replaced
    by ``new_id``. Example: ``merge_pair([1, 2, 1, 2, 2], (1, 2), 9) == [9, 9, 2]``."""
    a, b = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class ByteBPETokenizer:
    """A byte-level BPE tokenizer: ``encode(str) -> list[int]`` and ``decode(list[int]) -> str``.

    Build one with :meth:`train` (or :meth:`load`); the constructor takes already-learned merges.

    Args:
        merges: the learned pairs, in order; pair ``i`` becomes id ``256 + i``. Each element of a
            pair must be an id that exists before the merge (``< 256 + i``).
        special_tokens: strings that get their own ids after the merges, in the given order.
        pattern: the pre-tokenization regular expression (``regex`` syntax).

    Raises:
        ValueError: a malformed merge, a repeated or empty special token.
    """

    def __init__(
        self,
        merges: Sequence[tuple[int, int]],
        special_tokens: Sequence[str] = (),
        pattern: str = GPT2_SPLIT_PATTERN,
    ) -> None:
        self.merges: list[tuple[int, int]] = []
        vocab: list[bytes] = [bytes([i]) for i in range(256)]
        for i, pair in enumerate(merges):
            if len(pair) != 2 or not all(isinstance(t, int) and 0 <= t < 256 + i for t in pair):
                raise ValueError(f"merge {i} is {pair!r}; expected a pair of ids in [0, {256 + i})")
            a, b = int(pair[0]), int(pair[1])
            self.merges.append((a, b))
            vocab.append(vocab[a] + vocab[b])
        if isinstance(special_tokens, str):
            raise ValueError(
                f"special_tokens must be a list of strings, not the string {special_tokens!r}"
            )
        specials = list(special_tokens)
        if len(set(specials)) != len(specials) or any(
            not isinstance(s, str) or not s for s in specials
        ):
            raise ValueError(f"special tokens must be distinct non-empty strings, got {specials!r}")
        self.pattern = pattern
        try:
            self._split = regex.compile(pattern)
        except (regex.error, TypeError) as e:
            raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {e}") from e
        self._vocab = vocab  # id -> bytes, for ordinary (non-special) ids
        self.ranks: dict[tuple[int, int], int] = {p: 256 + i for i, p in enumerate(self.merges)}
        self.special_tokens: dict[str, int] = {s: len(vocab) + i for i, s in enumerate(specials)}
        self._special_by_id = {i: s for s, i in self.special_tokens.items()}
        # longest first, so that a special token that contains another one wins
        self._special_split = (
            regex.compile(
                "("
                + "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
                + ")"
            )
            if specials
            else None
        )
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ properties

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes + learned merges + special tokens."""
        return len(self._vocab) + len(self.special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes that ordinary id ``token_id`` stands for (special tokens: their UTF-8)."""
        if 0 <= token_id < len(self._vocab):
            return self._vocab[token_id]
        if token_id in self._special_by_id:
            return self._special_by_id[token_id].encode("utf-8")
        raise ValueError(f"unknown token id {token_id}; valid ids are 0..{self.vocab_size - 1}")

    def __repr__(self) -> str:
        return (
            f"ByteBPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={list(self.special_tokens)})"
        )

    # ------------------------------------------------------------------ training

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Sequence[str] = ("<|endoftext|>",),
        pattern: str = GPT2_SPLIT_PATTERN,
    ) -> ByteBPETokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        Each step merges the most frequent adjacent pair of ids (ties: the smallest pair
        ``(a, b)``), counting inside pre-tokens only. Occurrences of the special tokens are cut
        out of the training text first. If the text runs out of pairs, training stops early and
        the vocabulary is smaller than asked for.

        Args:
            text: the training corpus (non-empty).
            vocab_size: the total number of ids wanted, at least ``256 + len(special_tokens)``.
            special_tokens: strings that get reserved ids after the merges.
            pattern: the pre-tokenization regular expression.

        Raises:
            ValueError: an empty corpus or a vocabulary too small for the bytes and specials.
        """
        if not isinstance(text, str) or not text:
            raise ValueError("cannot train a tokenizer on an empty corpus; pass non-empty text")
        if isinstance(special_tokens, str):
            raise ValueError(
                f"special_tokens must be a list of strings, not the string {special_tokens!r}"
            )
        minimum = 256 + len(special_tokens)
        if vocab_size < minimum:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: a byte-level tokenizer needs at least "
                f"{minimum} ids (256 bytes + {len(special_tokens)} special tokens)"
            )
        split = regex.compile(pattern)
        pieces = [text]
        if special_tokens:
            specials = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len)[::-1])
            pieces = regex.split(specials, text)
        counts: Counter[str] = Counter()
        for piece in pieces:
            counts.update(split.findall(piece))
        merges = learn_merges(counts, vocab_size - minimum)
        return cls(merges, special_tokens, pattern)

    # ------------------------------------------------------------------ encoding

    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = list(chunk.encode("utf-8"))
        ranks = self.ranks
        while len(ids) >= 2:
            best = min(pairwise(ids), key=lambda p: ranks.get(p, _NO_RANK))
            new_id = ranks.get(best)
            if new_id is None:
                break
            ids = merge_pair(ids, best, new_id)
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` treating special-token strings as plain text (never raises on them)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"text is not valid Unicode (lone surrogate at index {e.start}); it has no UTF-8 "
                "bytes to tokenize"
            ) from e
        cache = self._cache
        if len(cache) > 200_000:
            cache.clear()
        out: list[int] = []
        for chunk in self._split.findall(text):
            ids = cache.get(chunk)
            if ids is None:
                ids = cache[chunk] = self._encode_chunk(chunk)
            out.extend(ids)
        return out

    def encode(
        self, text: str, allowed_special: Literal["all"] | Collection[str] = ()
    ) -> list[int]:
        """Encode ``text`` into ids.

        Args:
            text: any Unicode string.
            allowed_special: the special tokens that may appear in ``text`` and are then encoded
                as their single id; ``"all"`` allows every one.

        Returns:
            A list of ids in ``[0, vocab_size)``; ``decode`` of it gives ``text`` back.

        Raises:
            ValueError: ``text`` contains a special token that is not allowed (the message names
                it; use ``encode_ordinary`` to treat it as plain text), or an unknown special
                token is listed in ``allowed_special``.
        """
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        elif isinstance(allowed_special, str):
            allowed = {allowed_special}
            if allowed_special not in self.special_tokens:
                raise ValueError(
                    f"allowed_special={allowed_special!r} is neither 'all' nor a special token "
                    f"of this tokenizer ({list(self.special_tokens)})"
                )
        else:
            allowed = set(allowed_special)
            unknown = allowed - set(self.special_tokens)
            if unknown:
                raise ValueError(
                    f"allowed_special lists {sorted(unknown)}, which are not special tokens of "
                    f"this tokenizer ({list(self.special_tokens)})"
                )
        for s in self.special_tokens:
            if s not in allowed and s in text:
                raise ValueError(
                    f"text contains the special token {s!r}, which is not allowed; pass "
                    f"allowed_special={{{s!r}}} to encode it as id {self.special_tokens[s]}, or "
                    "use encode_ordinary() to encode it as plain text"
                )
        if not allowed or self._special_split is None:
            return self.encode_ordinary(text)
        out: list[int] = []
        for piece in self._special_split.split(text):
            if piece in allowed:
                out.append(self.special_tokens[piece])
            elif piece:
                out.extend(self.encode_ordinary(piece))
        return out

    # ------------------------------------------------------------------ decoding

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes that ``ids`` stand for (special tokens as their UTF-8).

        ``ids`` may be any iterable of ints, or a 1-D tensor/array (anything with ``tolist``).
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        vocab, n = self._vocab, len(self._vocab)
        parts: list[bytes] = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise ValueError(f"token ids are integers, got {i!r} ({type(i).__name__})")
            if 0 <= i < n:
                parts.append(vocab[i])
            elif i in self._special_by_id:
                parts.append(self._special_by_id[i].encode("utf-8"))
            else:
                raise ValueError(
                    f"cannot decode unknown token id {i!r}; valid ids are 0..{self.vocab_size - 1}"
                )
        return b"".join(parts)

    def decode(self, ids: Iterable[int]) -> str:
        """Turn ids (an iterable of ints or a 1-D tensor) back into text.

        Byte sequences that are not valid UTF-8 (possible only for ids that did not come from
        ``encode``, e.g. sampled by a model, or a cut through a character) become U+FFFD.

        Raises:
            ValueError: an id that is not an integer (booleans and floats included) or lies
                outside ``[0, vocab_size)`` (the message names it).
        """
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description: format, pattern, merges and special tokens."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "merges": [list(p) for p in self.merges],
            "special_tokens": list(self.special_tokens),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer to ``path`` as JSON, atomically. Returns the path."""
        text = json.dumps(self.to_dict())
        return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ByteBPETokenizer:
        """Read a tokenizer written by :meth:`save`.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is not valid JSON, or not a dlbook tokenizer file, or its
                contents are malformed (the message says which).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON (corrupt file?): {e}") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise ValueError(f"{path} is not a {FORMAT_NAME} file (no matching 'format' field)")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{path} has format version {data.get('version')!r}; this dlbook reads "
                f"{FORMAT_VERSION}"
            )
        merges, specials, pattern = (
            data.get("merges"),
            data.get("special_tokens"),
            data.get("pattern"),
        )
        if (
            not isinstance(merges, list)
            or not all(isinstance(m, list) and len(m) == 2 for m in merges)
            or not isinstance(specials, list)
            or not isinstance(pattern, str)
        ):
            raise ValueError(
                f"{path} is malformed: expected 'merges' (list of [a, b]), 'special_tokens' "
                "(list of str) and 'pattern' (str)"
            )
        return cls([(m[0], m[1]) for m in merges], specials, pattern)


def learn_merges(
    word_counts: dict[str, int] | Counter[str], num_merges: int
) -> list[tuple[int, int]]:
    """Learn up to ``num_merges`` BPE merges from pre-tokens and their counts.

    The pair counts are kept in a dict, updated after each merge only for the pre-tokens that
    held the merged pair (an index ``pair -> pre-tokens`` finds them), and the most frequent pair
    is taken from a heap with lazy deletion: a popped entry whose count is out of date is
    skipped. Ties go to the smallest pair ``(a, b)``.

    Args:
        word_counts: distinct pre-tokens (str) and how often each occurs.
        num_merges: the most merges to learn.

    Returns:
        The merges, in order; merge ``i`` creates id ``256 + i``.
    """
    words = [list(w.encode("utf-8")) for w in word_counts]
    freqs = list(word_counts.values())
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, (w, f) in enumerate(zip(words, freqs, strict=True)):
        for p in pairwise(w):
            pair_counts[p] += f
            where[p].add(wi)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while heap and len(merges) < num_merges:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg or neg == 0:
            continue  # stale entry: the count changed after it was pushed
        new_id = 256 + len(merges)
        merges.append(pair)
        changed: set[tuple[int, int]] = set()
        for wi in where.pop(pair, ()):
            old = words[wi]
            new = merge_pair(old, pair, new_id)
            if len(new) == len(old):
                continue
            f = freqs[wi]
            for p in pairwise(old):
                pair_counts[p] -= f
                changed.add(p)
            for p in pairwise(new):
                pair_counts[p] += f
                where[p].add(wi)
                changed.add(p)
            words[wi] = new
        for p in changed:
            c = pair_counts[p]
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                del pair_counts[p]
    return merges
