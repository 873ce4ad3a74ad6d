"""Retrieval-augmented generation over the Python documentation (section 6.1): a question set
built from the docs, the prompt that puts retrieved passages before a question, and the index
behind ``dlbook ask``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dlbook.retrieval import Chunk, chunk_documents, embed_cached, exact_search, python_docs

#: a method's entry: ``name(args)``, a blank line, then an indented description.
_METHOD = re.compile(r"^([A-Za-z_][\w.]*)\(([^\n]*)\)\n\n   (\S[^\n]*(?:\n   \S[^\n]*)*)", re.M)
#: a heading: a line underlined with ``*``, ``=``, ``-`` or ``~``.
_HEADING = re.compile(r"^(\S[^\n]*)\n([*=\-~])\2{3,}[ \t]*$", re.M)
_SENTENCE_END = re.compile(r"(?<=[a-z\")])\.(\s|$)")


@dataclass(frozen=True)
class Question:
    """A question with a checkable answer and the passages that hold it.

    ``marker`` is text that only the source passage holds (a method's signature line or a
    heading); ``gold`` are the ids of the chunks that contain it.
    """

    text: str
    answer: str
    kind: str
    marker: str
    gold: tuple[int, ...] = ()


def method_questions(documents: Mapping[str, str]) -> list[Question]:
    """"Which method does this?" questions: for every documented ``name(args)`` whose first
    description sentence has at least 6 words and does not name the method, ask for the method
    described by that sentence; the answer is the name's last part (``str.endswith`` →
    ``endswith``). Duplicate names and sentences are kept once."""
    out, names, sentences = [], set(), set()
    for text in documents.values():
        for m in _METHOD.finditer(text):
            name = m.group(1).split(".")[-1]
            desc = " ".join(m.group(3).split())
            first = _SENTENCE_END.split(desc, maxsplit=1)[0].strip().rstrip(".")
            if (len(first.split()) < 6 or name.lower() in first.lower() or name in names
                    or first in sentences or first.startswith(("These ", "See ", "Same "))):
                continue
            names.add(name)
            sentences.add(first)
            out.append(Question(f"Which Python method or function does this: {first}?", name,
                                "method", f"{m.group(1)}({m.group(2)})"))
    return out


def heading_questions(documents: Mapping[str, str]) -> list[Question]:
    """"What does the documentation say about <heading>?" for every distinct heading (quotes
    removed); the answer is the heading itself and the source is the passage holding it."""
    out, seen = [], set()
    for text in documents.values():
        for m in _HEADING.finditer(text):
            heading = m.group(1).strip()
            topic = heading.replace('"', "").strip()
            if topic.startswith("The "):
                topic = "the " + topic[4:]
            if topic.lower() in seen or len(topic) < 3:
                continue
            seen.add(topic.lower())
            out.append(Question(f"What does the Python documentation say about {topic}?",
                                heading, "heading", m.group(0)))
    return out


def attach_gold(questions: Sequence[Question], chunks: Sequence[Chunk]) -> list[Question]:
    """Fill each question's ``gold`` with the chunks that contain its marker whole; questions
    whose marker no chunk holds (cut by a chunk boundary) are dropped."""
    out = []
    for q in questions:
        gold = tuple(c.id for c in chunks if q.marker in c.text)
        if gold:
            out.append(Question(q.text, q.answer, q.kind, q.marker, gold))
    return out


def rag_messages(question: str, passages: Sequence[Chunk] = (),
                 instruction: str = "Answer briefly.") -> list[dict[str, str]]:
    """The chat turn that asks ``question`` (then ``instruction``), after the retrieved
    ``passages`` (numbered, each with its topic) when there are any."""
    if not question.strip():
        raise ValueError("the question is empty")
    if not passages:
        return [{"role": "user", "content": f"Question: {question}\n{instruction}"}]
    context = "\n\n".join(f"[{i + 1}] (topic: {c.source})\n{c.text}"
                          for i, c in enumerate(passages))
    return [{"role": "user", "content":
             f"Documentation:\n{context}\n\nQuestion: {question}\n{instruction}"}]


def answer(model: Any, tokenizer: Any, messages_list: Sequence[list[dict[str, str]]],
           max_new_tokens: int = 24, prefix: str = "") -> list[str]:
    """Greedy answers of a chat model to each conversation (batched by prompt length with the
    KV cache, :func:`dlbook.evaluate.generate_batch`). A ``prefix`` is written as the start of
    the assistant's turn and is part of each returned answer.

    Raises:
        ValueError: a prompt longer than the model's context.
    """
    from dlbook.evaluate import generate_batch, stop_token

    start = tokenizer.encode(prefix) if prefix else []
    prompts = [list(tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True))
               + start for m in messages_list]
    limit = model.config.block_size
    for p in prompts:
        if len(p) + max_new_tokens > limit:
            raise ValueError(f"the prompt has {len(p)} tokens; with {max_new_tokens} new ones it "
                             f"exceeds the model's {limit} positions")
    ids = generate_batch(model, prompts, max_new_tokens, stop_token(tokenizer))
    return [(prefix + tokenizer.decode(i)).strip() for i in ids]


def contains_answer(response: str, expected: str) -> bool:
    """The checker: ``expected`` appears in ``response`` as a whole identifier.

    Raises:
        ValueError: an empty (or blank) ``expected``, which would match anything.
    """
    if not expected.strip():
        raise ValueError("the expected answer is empty")
    return re.search(rf"(?<![\w]){re.escape(expected)}(?![\w])", response) is not None


# ------------------------------------------------------------------------------ the ask index


def check_question(question: str, encoder: Any, tokenizer: Any) -> None:
    """Raise ``ValueError`` for an empty question or one longer than the encoder's context."""
    if not question.strip():
        raise ValueError("the question is empty")
    n, limit = len(tokenizer.encode(question)), encoder.config.block_size
    if n > limit:
        raise ValueError(f"the question has {n} tokens, more than the encoder's {limit}; "
                         "ask a shorter question")


@dataclass
class DocsIndex:
    """Chunks of the Python docs and their MiniLM embeddings ``(N, C)``, with the encoder."""

    chunks: list[Chunk]
    embeddings: torch.Tensor
    encoder: Any
    tokenizer: Any

    def search(self, question: str, k: int = 3) -> list[tuple[Chunk, float]]:
        """The ``k`` passages closest to ``question`` (exact cosine search), best first.

        Raises:
            ValueError: an empty question, one longer than the encoder's context, or a bad k.
        """
        from dlbook.embed import sentence_embeddings

        check_question(question, self.encoder, self.tokenizer)
        q = sentence_embeddings(self.encoder, self.tokenizer, [question]).cpu()
        scores, ids = exact_search(q, self.embeddings, min(k, len(self.chunks)))
        return [(self.chunks[i], s) for i, s in zip(ids[0].tolist(), scores[0].tolist(),
                                                      strict=True)]


def docs_index(documents: Mapping[str, str] | None = None, progress: bool = True,
               encoder: tuple[Any, Any] | None = None) -> DocsIndex:
    """The index of :func:`dlbook.retrieval.python_docs` (or ``documents``), its embeddings
    read from the cache or built once (a corrupt cache file is rebuilt). ``encoder`` is
    MiniLM's ``(model, tokenizer)`` when the caller has loaded it already."""
    from dlbook.hub import load

    docs = python_docs() if documents is None else documents
    chunks = chunk_documents(docs)
    if not chunks:
        raise ValueError("the documents hold no text to index")
    model, tok = load("minilm-l6") if encoder is None else encoder
    emb, _ = embed_cached(model, tok, [c.text for c in chunks], "minilm-l6",
                          progress=progress, truncate=True)
    return DocsIndex(chunks, emb, model, tok)
