"""BERT's WordPiece tokenizer (section 5.1), read from a ``vocab.txt``: one token per line.

Encoding runs in three steps, the same as the reference (Hugging Face ``BertTokenizerFast``):

1. *normalise*: drop control characters, turn every whitespace into a space, put spaces around
   CJK ideographs, strip accents (NFD, then drop the combining marks) and lower-case;
2. *split* on whitespace, and split off every punctuation character as a word of its own;
3. *WordPiece*: cut each word greedily into the longest vocabulary entries, left to right; a
   piece that continues a word carries the prefix ``##``. A word with no such cut, or longer
   than ``max_input_chars_per_word`` characters, becomes ``[UNK]``.

The special tokens (``[CLS]``, ``[SEP]``, ``[PAD]``, ``[MASK]``, ``[UNK]``) written literally in
the text are recognised before normalisation, so ``"the [MASK] sat"`` holds a mask token.
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

#: Code-point ranges that BERT treats as CJK ideographs (each becomes a word of its own).
CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def is_cjk(char: str) -> bool:
    """Whether ``char`` is a CJK ideograph (Chinese characters, and their use in Japanese and
    Korean; not Hangul or kana)."""
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


def is_control(char: str) -> bool:
    """A control, format, private-use or surrogate character (Unicode ``Cc``, ``Cf``, ``Co``,
    ``Cs``) other than tab and newlines. Unassigned code points (``Cn``) are kept, as the
    reference does (they end up as ``[UNK]``)."""
    if char in "\t\n\r":
        return False
    return unicodedata.category(char) in ("Cc", "Cf", "Co", "Cs")


def is_punctuation(char: str) -> bool:
    """ASCII punctuation (``$``, ``+``, ``^``, ... included) or a Unicode ``P*`` character."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


@functools.lru_cache(maxsize=65536)
def _clean_char(char: str, cjk: bool) -> str:
    """What the cleaning step makes of one character (cached: text reuses few characters)."""
    if char in "\x00\ufffd" or is_control(char):
        return ""
    if char.isspace():
        return " "
    if cjk and is_cjk(char):
        return f" {char} "
    return char


def normalize(text: str, lowercase: bool = True, strip_accents: bool | None = None,
              cjk: bool = True) -> str:
    """BERT's normaliser: drop NUL, U+FFFD and control characters, map whitespace to spaces,
    surround CJK ideographs with spaces (``cjk``), strip accents (default: when lower-casing),
    lower-case character by character (as the reference does: no final-sigma rule)."""
    if text.isascii() and text.isprintable():  # the common case needs no per-character work
        return text.lower() if lowercase else text
    text = "".join([_clean_char(c, cjk) for c in text])
    if lowercase if strip_accents is None else strip_accents:
        text = "".join([c for c in unicodedata.normalize("NFD", text)
                        if unicodedata.category(c) != "Mn"])
    if lowercase:
        text = "".join([c.lower() for c in text])
    return text


def pre_tokenize(text: str) -> list[str]:
    """Split normalised text on whitespace, then isolate every punctuation character:
    ``"hello, world!"`` → ``["hello", ",", "world", "!"]``."""
    words: list[str] = []
    for chunk in text.split():
        if chunk.isalnum():  # no punctuation inside: one word
            words.append(chunk)
            continue
        start = 0
        for i, char in enumerate(chunk):
            if is_punctuation(char):
                if i > start:
                    words.append(chunk[start:i])
                words.append(char)
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words


class WordPieceTokenizer:
    """BERT's tokenizer: normalisation, word splitting and greedy longest-match WordPiece.

    Args:
        vocab: the tokens in id order (``vocab[i]`` has id ``i``).
        lowercase: lower-case the text (an *uncased* model).
        strip_accents: remove accents; ``None``: when ``lowercase``.
        tokenize_chinese_chars: split CJK ideographs into words of their own.
        max_input_chars_per_word: longer words become ``[UNK]`` (the reference's 100).
        model_max_length: longest sequence the matching model accepts (positions).

    Raises:
        ValueError: duplicate tokens, or a special token missing from the vocabulary.

    Example:
        >>> tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un",
        ...                           "##able", "a"])
        >>> tok.tokenize("Unable a")
        ['un', '##able', 'a']
        >>> tok.encode("Unable a")
        [2, 5, 6, 7, 3]
    """

    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

    def __init__(
        self,
        vocab: Sequence[str],
        *,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        max_input_chars_per_word: int = 100,
        model_max_length: int = 512,
    ) -> None:
        self.vocab: list[str] = list(vocab)
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self.vocab)}
        if len(self.token_to_id) != len(self.vocab):
            seen: set[str] = set()
            dup = next(t for t in self.vocab if t in seen or seen.add(t))  # type: ignore[func-returns-value]
            raise ValueError(f"the vocabulary lists the token {dup!r} twice")
        missing = [t for t in self.specials if t not in self.token_to_id]
        if missing:
            raise ValueError(f"the vocabulary lacks the special tokens {missing}")
        self.lowercase, self.strip_accents = lowercase, strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.max_input_chars_per_word = max_input_chars_per_word
        self.model_max_length = model_max_length
        ids = self.token_to_id
        self.pad_id, self.unk_id, self.cls_id = ids["[PAD]"], ids["[UNK]"], ids["[CLS]"]
        self.sep_id, self.mask_id = ids["[SEP]"], ids["[MASK]"]
        self.special_ids = frozenset(ids[t] for t in self.specials)
        self._special_re = re.compile("(" + "|".join(re.escape(t) for t in self.specials) + ")")
        # Words repeat (Zipf): remember the pieces of the most recent ones.
        self._pieces = functools.lru_cache(maxsize=1 << 16)(lambda w: tuple(self.wordpiece(w)))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> WordPieceTokenizer:
        """Read a ``vocab.txt`` (one token per line, line ``i`` is id ``i``); ``kwargs`` go to
        the constructor.

        Raises:
            FileNotFoundError: no such file.
            ValueError: an empty file, or one the constructor rejects.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no WordPiece vocabulary at {path}")
        vocab = path.read_text(encoding="utf-8").split("\n")
        if vocab and vocab[-1] == "":
            vocab.pop()  # the final newline
        if not vocab:
            raise ValueError(f"the WordPiece vocabulary {path} is empty")
        return cls([t.rstrip("\r") for t in vocab], **kwargs)

    @property
    def vocab_size(self) -> int:
        """Number of tokens ``V``."""
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"WordPieceTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase})"

    # ------------------------------------------------------------------ tokenizing

    def wordpiece(self, word: str) -> list[str]:
        """Cut one word into the longest vocabulary pieces, left to right (``##`` marks a piece
        that continues the word); ``["[UNK]"]`` if there is no such cut or the word is longer
        than ``max_input_chars_per_word``."""
        if len(word) > self.max_input_chars_per_word:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.token_to_id:
                    break
                end -= 1
            else:  # no prefix of the rest is in the vocabulary
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of ``text`` (no ``[CLS]``/``[SEP]`` framing)."""
        if not isinstance(text, str):
            raise TypeError(f"expected a str, got {type(text).__name__}")
        tokens: list[str] = []
        for part in self._special_re.split(text):
            if part in self.specials:
                tokens.append(part)
                continue
            norm = normalize(part, self.lowercase, self.strip_accents, self.tokenize_chinese_chars)
            for word in pre_tokenize(norm):
                tokens.extend(self._pieces(word))
        return tokens

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        """Ids of ``tokens``; unknown tokens map to ``[UNK]``'s id."""
        return [self.token_to_id.get(t, self.unk_id) for t in tokens]

    def encode(
        self, text: str, pair: str | None = None, *, add_special_tokens: bool = True
    ) -> list[int]:
        """Token ids of ``text`` framed as ``[CLS] text [SEP]`` (and ``pair [SEP]`` after it
        when given); see :meth:`encode_with_types` for the token types of a pair."""
        return self.encode_with_types(text, pair, add_special_tokens=add_special_tokens)[0]

    def encode_with_types(
        self, text: str, pair: str | None = None, *, add_special_tokens: bool = True,
        max_length: int | None = None,
    ) -> tuple[list[int], list[int]]:
        """``(ids, token_types)``: ``[CLS] A [SEP]`` of type 0, then ``B [SEP]`` of type 1.

        With ``max_length``, the longer of the two texts loses its last token until the whole
        fits (the reference's "longest first"); without it nothing is cut.

        Raises:
            ValueError: ``max_length`` leaves no room for the special tokens.
        """
        a = self.convert_tokens_to_ids(self.tokenize(text))
        b = None if pair is None else self.convert_tokens_to_ids(self.tokenize(pair))
        n_special = (2 + (b is not None)) if add_special_tokens else 0
        if max_length is not None:
            if max_length < n_special + 1 + (b is not None):
                raise ValueError(f"max_length={max_length} leaves no room for the text")
            budget = max_length - n_special
            while len(a) + (len(b) if b is not None else 0) > budget:
                if b is not None and len(b) > len(a):
                    b.pop()
                else:
                    a.pop()
        if not add_special_tokens:
            ids = a + (b or [])
            return ids, [0] * len(a) + [1] * len(b or [])
        ids = [self.cls_id, *a, self.sep_id]
        types = [0] * len(ids)
        if b is not None:
            ids += [*b, self.sep_id]
            types += [1] * (len(b) + 1)
        return ids, types

    def batch(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        *,
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode several texts (or text pairs) into padded tensors, each ``(B, T)`` with ``T``
        the longest encoding:

        * ``input_ids`` (int64), padded with ``[PAD]``;
        * ``token_type_ids`` (int64), 0 for the first text, 1 for the second, 0 on padding;
        * ``attention_mask`` (bool), ``True`` for real tokens.

        ``max_length`` truncates each encoding as in :meth:`encode_with_types`.

        Raises:
            ValueError: no texts, or ``pairs`` of a different length.
        """
        if isinstance(texts, str):
            raise TypeError("batch() takes a list of texts; for one text use encode()")
        if len(texts) == 0:
            raise ValueError("batch() needs at least one text")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(pairs)} pairs")
        encoded = [
            self.encode_with_types(t, None if pairs is None else pairs[i], max_length=max_length)
            for i, t in enumerate(texts)
        ]
        t_max = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(texts), t_max), self.pad_id, dtype=torch.long)
        token_types = torch.zeros((len(texts), t_max), dtype=torch.long)
        mask = torch.zeros((len(texts), t_max), dtype=torch.bool)
        for i, (ids, types) in enumerate(encoded):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            token_types[i, : len(ids)] = torch.tensor(types)
            mask[i, : len(ids)] = True
        return {"input_ids": input_ids, "token_type_ids": token_types, "attention_mask": mask}

    # ------------------------------------------------------------------ decoding

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``: pieces joined with spaces, ``##`` pieces glued to the previous one,
        no space before ``. , ! ?`` (the reference's clean-up). Normalisation
        is lossy, so ``decode(encode(s))`` is the lower-cased, accent-free ``s``.

        Raises:
            ValueError: an id outside ``[0, vocab_size)``.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out: list[str] = []
        for i in ids:
            if not 0 <= int(i) < self.vocab_size:
                raise ValueError(f"token id {i} is outside [0, {self.vocab_size})")
            if skip_special_tokens and int(i) in self.special_ids:
                continue
            token = self.vocab[int(i)]
            if token.startswith("##") and out:
                out[-1] += token[2:]
            else:
                out.append(token)
        text = " ".join(out)
        for mark in ".?!,":
            text = text.replace(" " + mark, mark)
        return text


__all__ = ["WordPieceTokenizer", "is_cjk", "is_control", "is_punctuation", "normalize",
           "pre_tokenize"]
