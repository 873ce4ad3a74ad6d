"""Semantic search over a small document collection (section 6.1): chunking, cached
embeddings, exact and approximate nearest-neighbour search, BM25, and recall@k.

Shapes use ``N`` passages, ``Q`` queries, ``C`` the embedding width and ``k`` results per query.
Embeddings are unit vectors, so a dot product is a cosine similarity.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlbook.checkpoint import atomic_write
from dlbook.config import cache_dir
from dlbook.embed import sentence_embeddings

_WORD = re.compile(r"\S+")
_TERM = re.compile(r"\w+")


# ------------------------------------------------------------------------------ chunking


@dataclass(frozen=True)
class Chunk:
    """A passage: ``text == documents[source][start:end]``."""

    id: int
    source: str
    start: int
    end: int
    text: str


def chunk_spans(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """Cut ``text`` into windows of ``size`` whitespace-separated words; each window starts
    ``size - overlap`` words after the previous one, and the last one ends at the last word.
    Returns character spans ``(start, end)`` (a window runs from its first word's first
    character to its last word's last character).

    Every word lies in at least one window, consecutive windows share exactly ``overlap``
    words (the last may share more, so that no window is a short leftover), and a text
    without words gives ``[]``.

    Raises:
        ValueError: ``size < 1`` or ``overlap`` outside ``[0, size)``.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1 word, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, size={size}), got {overlap}")
    words = [m.span() for m in _WORD.finditer(text)]
    if not words:
        return []
    step = size - overlap
    starts = list(range(0, max(len(words) - size, 0) + 1, step))
    if starts[-1] + size < len(words):  # a last window flush with the end
        starts.append(len(words) - size)
    return [(words[s][0], words[min(s + size, len(words)) - 1][1]) for s in starts]


def chunk_documents(documents: Mapping[str, str], size: int = 80,
                    overlap: int = 10) -> list[Chunk]:
    """Chunk every document with :func:`chunk_spans` → a list of :class:`Chunk`, numbered
    ``0..N-1`` in the order of ``documents``."""
    chunks: list[Chunk] = []
    for source, text in documents.items():
        for start, end in chunk_spans(text, size, overlap):
            chunks.append(Chunk(len(chunks), source, start, end, text[start:end]))
    return chunks


def python_docs(dedupe: bool = True) -> dict[str, str]:
    """The Python documentation that every CPython install carries: ``pydoc_data.topics``,
    topic name → text (the pages ``help("with")`` shows).

    Several topics repeat sections of others (``compound`` holds ``if``, ``while``, ``with``
    ...). With ``dedupe`` a paragraph (text between blank lines) already seen in an earlier
    topic is dropped, and a topic left empty is dropped, so every passage is found once.
    """
    from pydoc_data.topics import topics

    if not dedupe:
        return dict(topics)
    seen: set[str] = set()
    out: dict[str, str] = {}
    for name, text in topics.items():
        kept = []
        for para in text.split("\n\n"):
            if para.strip() and para.strip() not in seen:
                seen.add(para.strip())
                kept.append(para)
        if kept:
            out[name] = "\n\n".join(kept)
    return out


# ------------------------------------------------------------------------------ cached embeddings


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a model's parameter names, shapes and values (changes with any weight)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def embedding_key(texts: Sequence[str], model_name: str, fingerprint: str) -> str:
    """The cache key of an embedding matrix: a hash of the model and of every text, in order."""
    h = hashlib.sha256(f"{model_name}\0{fingerprint}\0{len(texts)}".encode())
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()[:32]


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` (no pickles) atomically, with :func:`atomic_write`."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
            np.save(f, array, allow_pickle=False)

    atomic_write(path, write)


def load_embeddings(path: Path, n: int, width: int) -> torch.Tensor:
    """Read a cached ``(n, width)`` float32 matrix.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable ``.npy`` of that shape and dtype (corrupt).
    """
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npy file ({e})") from None
    if array.shape != (n, width) or array.dtype != np.float32 or not np.isfinite(array).all():
        raise ValueError(f"{path} holds {array.dtype}{array.shape}, expected float32{(n, width)}")
    return torch.from_numpy(array)


def embed_cached(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    model_name: str,
    batch_size: int = 64,
    progress: bool = True,
    folder: Path | None = None,
    truncate: bool = False,
) -> tuple[torch.Tensor, Path]:
    """Embed ``texts`` with :func:`dlbook.embed.sentence_embeddings` → ``(N, C)`` unit vectors
    (CPU float32) and the cache file, under ``cache_dir()/embeddings`` unless ``folder`` is given.

    The file name is :func:`embedding_key` of the texts and the model (its name and a hash of
    its weights), so a changed corpus or model never reads stale vectors. A missing file is
    computed (with a tqdm bar when ``progress``) and written atomically; a corrupt one is
    reported with a warning and rebuilt. ``truncate`` is passed on to ``sentence_embeddings``
    (embed only the first ``block_size`` tokens of a longer text) and is part of the key.

    Raises:
        ValueError: no texts, or a text longer than the model's context and ``truncate=False``.
    """
    import warnings

    from tqdm.auto import tqdm

    if len(texts) == 0:
        raise ValueError("embed_cached needs at least one text")
    key = embedding_key(texts, f"{model_name}/truncate={truncate}", model_fingerprint(model))
    path = (folder or cache_dir() / "embeddings") / f"{model_name}-{key}.npy"
    width = model.config.n_embd
    try:
        return load_embeddings(path, len(texts), width), path
    except FileNotFoundError:
        pass
    except ValueError as e:
        warnings.warn(f"the embedding cache is corrupt and is rebuilt: {e}", stacklevel=2)
    out = torch.empty(len(texts), width)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
    batches = range(0, len(texts), batch_size)
    for s in tqdm(batches, desc=f"embedding {len(texts)} passages", disable=not progress):
        idx = order[s : s + batch_size]
        out[idx] = sentence_embeddings(model, tokenizer, [texts[i] for i in idx],
                                       batch_size=batch_size, truncate=truncate).cpu()
    _save_npy(path, out.numpy())
    return out, path


# ------------------------------------------------------------------------------ search


def exact_search(queries: torch.Tensor, passages: torch.Tensor,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact maximum-inner-product search: ``queries (Q, C)`` against ``passages (N, C)`` →
    ``(scores (Q, k), ids (Q, k))``, best first (the top-k of ``queries @ passages.T``)."""
    if queries.ndim != 2 or passages.ndim != 2 or queries.shape[1] != passages.shape[1]:
        raise ValueError(f"need (Q, C) and (N, C), got {tuple(queries.shape)} "
                         f"and {tuple(passages.shape)}")
    if not 1 <= k <= passages.shape[0]:
        raise ValueError(f"k must be in [1, {passages.shape[0]}], got {k}")
    return torch.topk(queries @ passages.T, k, dim=1)


def hnsw_index(passages: torch.Tensor, m: int = 16, ef_construction: int = 40) -> Any:
    """A FAISS HNSW graph (Malkov & Yashunin) over ``passages (N, C)`` with inner-product
    scores; ``m`` links per node (FAISS gives layer 0 ``2 * m``), ``ef_construction`` the
    candidate list used while inserting. Search it with :func:`ann_search`.

    Raises:
        ValueError: ``passages`` not a non-empty ``(N, C)`` matrix, ``m < 2`` or
            ``ef_construction < 1`` (FAISS would abort the interpreter instead).
    """
    import faiss

    if passages.ndim != 2 or passages.shape[0] < 1 or passages.shape[1] < 1:
        raise ValueError(f"need a non-empty (N, C) matrix, got {tuple(passages.shape)}")
    if m < 2:
        raise ValueError(f"m must be >= 2 links per node, got {m}")
    if ef_construction < 1:
        raise ValueError(f"ef_construction must be >= 1, got {ef_construction}")
    index = faiss.IndexHNSWFlat(passages.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(np.ascontiguousarray(passages.numpy(), dtype=np.float32))
    return index


def ann_search(index: Any, queries: torch.Tensor, k: int,
               ef_search: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Search a :func:`hnsw_index` → ``(scores (Q, k), ids (Q, k))``; a larger ``ef_search``
    explores more of the graph (slower, closer to exact).

    Raises:
        ValueError: ``queries`` not ``(Q, C)`` with the index's ``C``, a bad ``k``, or
            ``ef_search < 1``.
    """
    if queries.ndim != 2 or queries.shape[1] != index.d:
        raise ValueError(f"need queries (Q, {index.d}), got {tuple(queries.shape)}")
    if ef_search < 1:
        raise ValueError(f"ef_search must be >= 1, got {ef_search}")
    if not 1 <= k <= index.ntotal:
        raise ValueError(f"k must be in [1, {index.ntotal}], got {k}")
    index.hnsw.efSearch = max(ef_search, k)
    scores, ids = index.search(np.ascontiguousarray(queries.numpy(), dtype=np.float32), k)
    return torch.from_numpy(scores), torch.from_numpy(ids)


def overlap_at_k(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """ANN recall against exact search: the mean share of each query's exact top-k ids
    ``(Q, k)`` that the approximate top-k ``(Q, k)`` also returned."""
    if approx.shape != exact.shape:
        raise ValueError(f"shapes differ: {tuple(approx.shape)} vs {tuple(exact.shape)}")
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact, strict=True)]
    return sum(hits) / exact.numel()


def recall_at_k(ranked: torch.Tensor | Sequence[Sequence[int]],
                gold: Sequence[Sequence[int]] | Sequence[set[int]], k: int) -> float:
    """Share of queries with at least one gold passage among the first ``k`` of their ranked
    ids ``(Q, >= k)``; ``gold[q]`` is the set of passages that answer query ``q``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranked = ranked.tolist() if isinstance(ranked, torch.Tensor) else ranked
    if len(ranked) != len(gold) or not ranked:
        raise ValueError(f"need one ranking per query, got {len(ranked)} for {len(gold)}")
    if any(len(r) < k for r in ranked):
        raise ValueError(f"a ranking has fewer than k={k} ids")
    return sum(bool(set(r[:k]) & set(g)) for r, g in zip(ranked, gold, strict=True)) / len(gold)


# ------------------------------------------------------------------------------ BM25


def terms(text: str) -> list[str]:
    """BM25's tokens: lower-cased runs of letters, digits and underscores."""
    return _TERM.findall(text.lower())


class BM25:
    """Okapi BM25 (Robertson & Zaragoza, 2009) over ``documents``:

    .. math:: s(q, d) = \\sum_{t \\in q} \\mathrm{idf}(t)\\,
              \\frac{f_{t,d}\\,(k_1 + 1)}{f_{t,d} + k_1 (1 - b + b\\,|d| / \\mathrm{avgdl})},
              \\qquad \\mathrm{idf}(t) = \\ln\\!\\Big(1 + \\frac{N - n_t + 0.5}{n_t + 0.5}\\Big)

    with ``f`` the term's count in ``d``, ``n_t`` the number of documents holding ``t``, and
    the ``1 +`` inside the log (Lucene's variant) keeping the idf positive; Robertson &
    Zaragoza's idf has no ``1 +`` and is negative for terms in more than half the documents.
    A query term that repeats counts each time. Scoring walks an inverted index (term →
    documents), so a query costs time in proportion to the postings of its terms.
    """

    def __init__(self, documents: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        if not documents:
            raise ValueError("BM25 needs at least one document")
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b = k1, b
        counts = [Counter(terms(d)) for d in documents]
        self.n_docs = len(documents)
        self.doc_len = np.array([sum(c.values()) for c in counts], dtype=np.float64)
        self.avgdl = max(float(self.doc_len.mean()), 1e-9)
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for i, c in enumerate(counts):
            for t, f in c.items():
                ids, tfs = postings.setdefault(t, ([], []))
                ids.append(i)
                tfs.append(f)
        self.postings = {t: (np.array(i), np.array(f, dtype=np.float64))
                         for t, (i, f) in postings.items()}

    def idf(self, term: str) -> float:
        n_t = len(self.postings[term][0]) if term in self.postings else 0
        return math.log(1 + (self.n_docs - n_t + 0.5) / (n_t + 0.5))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of ``query`` against every document → ``(N,)``."""
        out = np.zeros(self.n_docs)
        norm = self.k1 * (1 - self.b + self.b * self.doc_len / self.avgdl)  # (N,)
        for t in terms(query):
            if t not in self.postings:
                continue
            ids, tf = self.postings[t]
            out[ids] += self.idf(t) * tf * (self.k1 + 1) / (tf + norm[ids])
        return out

    def search(self, queries: Sequence[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``k`` documents of each query → ``(scores (Q, k), ids (Q, k))``.

        Raises:
            ValueError: no queries, or ``k`` outside ``[1, N]``.
        """
        if len(queries) == 0:
            raise ValueError("BM25.search needs at least one query")
        if not 1 <= k <= self.n_docs:
            raise ValueError(f"k must be in [1, {self.n_docs}], got {k}")
        s = torch.from_numpy(np.stack([self.scores(q) for q in queries]))
        return torch.topk(s, k, dim=1)


__all__ = [
    "BM25", "Chunk", "ann_search", "chunk_documents", "chunk_spans", "embed_cached",
    "embedding_key", "exact_search", "hnsw_index", "load_embeddings", "model_fingerprint",
    "overlap_at_k", "python_docs", "recall_at_k", "terms",
]
