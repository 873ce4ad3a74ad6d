"""The byte-level BPE tokenizer of a GGUF file (GPT-2 style, as SmolLM2 and many others use).

A GGUF file ships its tokenizer as metadata: ``tokenizer.ggml.tokens`` (the vocabulary, one
string per id), ``tokenizer.ggml.merges`` (``"a b"`` strings, highest priority first) and
``tokenizer.ggml.token_type`` (``3`` marks control tokens such as ``<|im_start|>``). It is the
same algorithm as :class:`dlbook.tokenizers.ByteBPETokenizer` (section 4.1), with two
differences of bookkeeping:

* token strings spell bytes with GPT-2's printable alphabet (:func:`bytes_to_unicode`: the byte
  of a space is ``"Ġ"``, of a newline ``"Ċ"``), and ids are positions in the given vocabulary,
  not ``256 + merge index``;
* a merge is ranked by its position in the list, and its result is the vocabulary id of the
  concatenated string.

Pre-tokenization is GPT-2's pattern, which is what ``transformers`` builds from a GGUF whose
``tokenizer.ggml.pre`` is ``"smollm"``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from functools import cache
from itertools import pairwise
from typing import Any, Literal

from dlbook.tokenizers import GPT2_SPLIT_PATTERN, ByteBPETokenizer, merge_pair

__all__ = ["CHATML_SYSTEM_PROMPT", "GGUFBPETokenizer", "bytes_to_unicode"]

CONTROL = 3  # llama.cpp's token type of control (special) tokens
_NO_RANK = 1 << 62

#: The system message SmolLM2's chat template adds when a conversation has none.
CHATML_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → character map: printable Latin-1 bytes map to themselves, the
    other 68 bytes (controls, space, ...) to the characters ``U+0100`` onward, so every token
    string is printable and has no white space."""
    printable = [
        *range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)
    ]
    out = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


class GGUFBPETokenizer(ByteBPETokenizer):
    """Byte-level BPE over a given vocabulary and merge list (a GGUF/``tokenizer.json`` one).

    ``encode``/``encode_ordinary``/``decode`` behave as in :class:`ByteBPETokenizer`: special
    tokens in the text are an error unless listed in ``allowed_special``.

    Args:
        tokens: the vocabulary; ``tokens[i]`` is the string of id ``i`` (bytes spelled with
            :func:`bytes_to_unicode`, special tokens verbatim).
        merges: ``"a b"`` strings, in priority order (first = merged first).
        special_ids: the ids of the special (control) tokens.
        pattern: the pre-tokenization regular expression.
        chat_template: the model's Jinja chat template, kept for reference (see
            :meth:`apply_chat_template`).

    Raises:
        ValueError: a merge whose parts or result are not in the vocabulary, a special id out
            of range, or a byte vocabulary with repeated tokens.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        merges: Sequence[str],
        special_ids: Collection[int],
        pattern: str = GPT2_SPLIT_PATTERN,
        chat_template: str | None = None,
    ) -> None:
        bad = [i for i in special_ids if not 0 <= i < len(tokens)]
        if bad:
            raise ValueError(f"special ids {bad} are outside the vocabulary of {len(tokens)}")
        specials = [tokens[i] for i in sorted(special_ids)]
        # The base class sets up the pattern, the special-token splitter and the chunk cache;
        # ids are re-assigned below to this vocabulary's.
        super().__init__([], specials, pattern)
        self.tokens = list(tokens)
        self.token_ids = {t: i for i, t in enumerate(self.tokens)}
        if len(self.token_ids) != len(self.tokens):
            raise ValueError("the vocabulary repeats a token string")
        self.special_tokens = {tokens[i]: i for i in sorted(special_ids)}
        self._special_by_id = {i: s for s, i in self.special_tokens.items()}
        decoder = {c: b for b, c in bytes_to_unicode().items()}
        self._vocab = [
            t.encode("utf-8") if i in self._special_by_id
            else bytes(decoder[c] for c in t) if all(c in decoder for c in t)
            else t.encode("utf-8")  # not a byte-spelled token (none in SmolLM2's vocabulary)
            for i, t in enumerate(self.tokens)
        ]
        b2u = bytes_to_unicode()
        # byte -> id of its one-byte token (a few bytes have none: they cannot be encoded)
        self.byte_ids = {b: self.token_ids[c] for b, c in b2u.items() if c in self.token_ids}
        self.merge_ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, merge in enumerate(merges):
            parts = merge.split(" ")
            if len(parts) != 2 or not all(p in self.token_ids for p in parts):
                raise ValueError(f"merge {rank} {merge!r} is not two tokens of the vocabulary")
            joined = parts[0] + parts[1]
            if joined not in self.token_ids:
                raise ValueError(f"merge {rank} {merge!r} makes {joined!r}, not in the vocabulary")
            pair = (self.token_ids[parts[0]], self.token_ids[parts[1]])
            self.merge_ranks.setdefault(pair, (rank, self.token_ids[joined]))
        self.merges = list(self.merge_ranks)  # id pairs in priority order
        self.chat_template = chat_template

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> GGUFBPETokenizer:
        """Build the tokenizer from a GGUF file's metadata (``tokenizer.ggml.*`` keys).

        Raises:
            ValueError: the file's tokenizer is not a GPT-2-style byte-level BPE.
        """
        model = metadata.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(
                f"the GGUF tokenizer model is {model!r}; only byte-level BPE ('gpt2') is supported"
            )
        tokens = metadata["tokenizer.ggml.tokens"]
        types = metadata.get("tokenizer.ggml.token_type", [1] * len(tokens))
        return cls(
            tokens,
            metadata["tokenizer.ggml.merges"],
            [i for i, t in enumerate(types) if t == CONTROL],
            chat_template=metadata.get("tokenizer.chat_template"),
        )

    @property
    def vocab_size(self) -> int:
        """Number of ids (special tokens included)."""
        return len(self.tokens)

    def __repr__(self) -> str:
        return (
            f"GGUFBPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merge_ranks)}, "
            f"special_tokens={len(self.special_tokens)})"
        )

    def _encode_chunk(self, chunk: str) -> list[int]:
        try:
            ids = [self.byte_ids[b] for b in chunk.encode("utf-8")]
        except KeyError as e:
            raise ValueError(
                f"the text holds {chunk!r}, whose byte 0x{e.args[0]:02x} has no token in this "
                "vocabulary (it never occurred in the tokenizer's training data); remove it"
            ) from None
        ranks = self.merge_ranks
        while len(ids) >= 2:
            best = min(pairwise(ids), key=lambda p: ranks.get(p, (_NO_RANK, 0))[0])
            if best not in ranks:
                break
            ids = merge_pair(ids, best, ranks[best][1])
        return ids

    def encode(
        self, text: str, allowed_special: Literal["all"] | Collection[str] = ()
    ) -> list[int]:
        """Encode ``text`` into ids (see :meth:`ByteBPETokenizer.encode`).

        Raises:
            ValueError: a special token in ``text`` that is not allowed, an unknown name in
                ``allowed_special``, or a byte this vocabulary cannot spell (SmolLM2 lacks a few
                rare control bytes such as ``0x04``).
        """
        return super().encode(text, allowed_special)

    def to_dict(self) -> dict[str, Any]:
        """Not supported: this tokenizer is read from its GGUF file, not saved by dlbook."""
        raise NotImplementedError("a GGUF tokenizer is read from its .gguf file; it is not saved")

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, str]],
        add_generation_prompt: bool = False,
        tokenize: bool = False,
    ) -> str | list[int]:
        """Render a conversation in SmolLM2's ChatML template (the GGUF's
        ``tokenizer.chat_template``, reproduced in Python)::

            <|im_start|>system\\nYou are a helpful ...<|im_end|>\\n   (only if none is given)
            <|im_start|>{role}\\n{content}<|im_end|>\\n              (each message)
            <|im_start|>assistant\\n                                 (add_generation_prompt)

        Args:
            messages: dicts with ``"role"`` and ``"content"`` strings.
            add_generation_prompt: end with the header of the assistant's turn.
            tokenize: return ids instead of the string.

        Raises:
            ValueError: a message without a string role/content, or whose content holds a
                special token (it would change the structure of the conversation).
        """
        if not messages:
            raise ValueError("messages is empty; pass a list of {'role': ..., 'content': ...}")
        parts = []
        for i, m in enumerate(messages):
            role, content = m.get("role"), m.get("content")
            if not isinstance(role, str) or not isinstance(content, str) or not role:
                raise ValueError(f"message {i} needs string 'role' and 'content', got {dict(m)}")
            for s in self.special_tokens:
                if s in content or s in role:
                    raise ValueError(f"message {i} contains the special token {s!r}; remove it")
            if i == 0 and role != "system":
                parts.append(f"<|im_start|>system\n{CHATML_SYSTEM_PROMPT}<|im_end|>\n")
            parts.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        text = "".join(parts)
        return self.encode(text, allowed_special="all") if tokenize else text
