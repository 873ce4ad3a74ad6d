"""Chunking, the embedding cache, exact/ANN search, BM25 and recall@k (dlbook.retrieval), and
the question generators and checker of dlbook.rag."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest
import torch

from dlbook.rag import (
    attach_gold,
    contains_answer,
    heading_questions,
    method_questions,
    rag_messages,
)
from dlbook.retrieval import (
    BM25,
    ann_search,
    chunk_documents,
    chunk_spans,
    embed_cached,
    exact_search,
    hnsw_index,
    load_embeddings,
    overlap_at_k,
    python_docs,
    recall_at_k,
    terms,
)


# ----------------------------------------------------------------------------- chunking
@pytest.mark.parametrize("n_words,size,overlap", [(1, 5, 2), (10, 4, 1), (23, 7, 3), (7, 7, 0),
                                                   (50, 10, 9), (6, 3, 0)])
def test_chunks_cover_every_word_with_the_stated_overlap(n_words, size, overlap):
    words = [f"w{i}" for i in range(n_words)]
    text = "  ".join(words) + "\n"
    spans = chunk_spans(text, size, overlap)
    windows = [text[s:e].split() for s, e in spans]
    assert all(1 <= len(w) <= size for w in windows)
    assert [w for win in windows for w in win if w] and set(sum(windows, [])) == set(words)
    for s, e in spans:  # boundaries fall on word edges
        assert not text[s].isspace() and not text[e - 1].isspace()
        assert s == 0 or text[s - 1].isspace()
        assert e == len(text) or text[e].isspace()
    for a, b in zip(windows, windows[1:], strict=False):
        shared = len(set(a) & set(b))
        assert shared >= overlap and (b is windows[-1] or shared == overlap)
    assert windows[-1][-1] == words[-1] and windows[0][0] == words[0]


def test_chunking_empty_and_bad_arguments():
    assert chunk_spans("", 5, 1) == [] and chunk_spans(" \n\t ", 5, 1) == []
    assert chunk_documents({"a": "", "b": "x y"}, 4, 1)[0].source == "b"
    for size, overlap in ((0, 0), (3, 3), (3, -1)):
        with pytest.raises(ValueError):
            chunk_spans("a b c", size, overlap)


def test_chunks_are_slices_of_their_documents():
    docs = {"x": "alpha beta gamma delta epsilon", "y": "one\n\ntwo three"}
    chunks = chunk_documents(docs, 2, 1)
    assert [c.id for c in chunks] == list(range(len(chunks)))
    assert all(docs[c.source][c.start:c.end] == c.text for c in chunks)


def test_python_docs_dedupe_drops_repeated_paragraphs():
    full, deduped = python_docs(dedupe=False), python_docs()
    paragraphs = [p.strip() for t in deduped.values() for p in t.split("\n\n") if p.strip()]
    assert len(paragraphs) == len(set(paragraphs))
    assert sum(map(len, deduped.values())) < sum(map(len, full.values()))


# ----------------------------------------------------------------------------- embedding cache
class ToyEncoder(torch.nn.Module):
    """Bag of character codes → (B, T, 4) hidden states; enough for sentence_embeddings."""

    class config:  # noqa: N801
        block_size = 16
        n_embd = 4

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)))

    def hidden_states(self, idx, mask, types):
        x = torch.stack([idx % 2, idx % 3, idx % 5, idx % 7], -1).float()
        return x @ self.w


class ToyTokenizer:
    def encode(self, text):
        return [ord(c) for c in text]

    def batch(self, texts, max_length=None):
        ids = [self.encode(t)[:max_length] for t in texts]
        T = max(len(i) for i in ids)
        input_ids = torch.tensor([i + [0] * (T - len(i)) for i in ids])
        mask = torch.tensor([[1] * len(i) + [0] * (T - len(i)) for i in ids]).bool()
        return {"input_ids": input_ids, "attention_mask": mask,
                "token_type_ids": torch.zeros_like(input_ids)}


def test_embedding_cache_hits_and_invalidates(tmp_path):
    model, tok = ToyEncoder(), ToyTokenizer()
    texts = ["abc", "hello", "xyz q"]
    emb, path = embed_cached(model, tok, texts, "toy", progress=False, folder=tmp_path)
    assert path.exists() and emb.shape == (3, 4)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, no leftover
    again, path2 = embed_cached(model, tok, texts, "toy", progress=False, folder=tmp_path)
    assert path2 == path and torch.equal(again, emb)
    _, other = embed_cached(model, tok, texts[:2] + ["xyz r"], "toy", progress=False,
                            folder=tmp_path)
    assert other != path  # a changed corpus is another file
    with torch.no_grad():
        model.w.add_(1.0)
    _, changed_model = embed_cached(model, tok, texts, "toy", progress=False, folder=tmp_path)
    assert changed_model not in (path, other)  # changed weights too


def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path):
    model, tok = ToyEncoder(), ToyTokenizer()
    emb, path = embed_cached(model, tok, ["ab", "cd"], "toy", progress=False, folder=tmp_path)
    path.write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="not a readable"):
        load_embeddings(path, 2, 4)
    with pytest.warns(UserWarning, match="corrupt"):
        rebuilt, _ = embed_cached(model, tok, ["ab", "cd"], "toy", progress=False,
                                  folder=tmp_path)
    assert torch.allclose(rebuilt, emb)
    np.save(path, np.zeros((3, 4), np.float32))  # wrong shape counts as corrupt too
    with pytest.raises(ValueError, match="expected"):
        load_embeddings(path, 2, 4)


# ----------------------------------------------------------------------------- search
def test_exact_search_matches_brute_force_and_hnsw_agrees():
    g = torch.Generator().manual_seed(0)
    passages = torch.nn.functional.normalize(torch.randn(500, 16, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=1)
    scores, ids = exact_search(queries, passages, 5)
    for q in range(20):
        brute = sorted(range(500), key=lambda i: -float(queries[q] @ passages[i]))[:5]
        assert ids[q].tolist() == brute
    index = hnsw_index(passages, m=16, ef_construction=80)
    _, ann_ids = ann_search(index, queries, 5, ef_search=200)
    assert overlap_at_k(ann_ids, ids) >= 0.95
    with pytest.raises(ValueError):
        exact_search(queries, passages, 0)
    with pytest.raises(ValueError):
        exact_search(queries[:, :3], passages, 2)


@pytest.mark.parametrize("kwargs", [{"m": 0}, {"m": 1}, {"ef_construction": 0}])
def test_hnsw_index_rejects_bad_arguments(kwargs):
    passages = torch.nn.functional.normalize(torch.randn(50, 8), dim=1)
    with pytest.raises(ValueError):
        hnsw_index(passages, **kwargs)


def test_hnsw_index_and_ann_search_reject_bad_shapes():
    passages = torch.nn.functional.normalize(torch.randn(50, 8), dim=1)
    with pytest.raises(ValueError):
        hnsw_index(passages[0])  # 1-D
    with pytest.raises(ValueError):
        hnsw_index(passages[:0])  # no rows
    index = hnsw_index(passages)
    with pytest.raises(ValueError):
        ann_search(index, passages[:3, :4], 2)  # wrong width
    with pytest.raises(ValueError):
        ann_search(index, passages[0], 2)  # 1-D
    with pytest.raises(ValueError):
        ann_search(index, passages[:3], 2, ef_search=0)
    with pytest.raises(ValueError):
        ann_search(index, passages[:3], 0)


def test_recall_and_overlap():
    ranked = torch.tensor([[3, 1, 2], [0, 4, 5]])
    assert recall_at_k(ranked, [{1}, {9}], 1) == 0.0
    assert recall_at_k(ranked, [{1}, {9}], 2) == 0.5
    assert recall_at_k(ranked, [{1}, {5, 9}], 3) == 1.0
    assert overlap_at_k(torch.tensor([[1, 2]]), torch.tensor([[2, 3]])) == 0.5
    with pytest.raises(ValueError):
        recall_at_k(ranked, [{1}], 1)
    for bad_k in (0, -1):
        with pytest.raises(ValueError, match="k must be >= 1"):
            recall_at_k(ranked, [{1}, {9}], bad_k)


# ----------------------------------------------------------------------------- BM25
def brute_bm25(query, docs, k1, b):
    """BM25 with Lucene's idf (the +1 inside the log), the slowest way."""
    tokenized = [re.findall(r"\w+", d.lower()) for d in docs]
    avgdl = sum(map(len, tokenized)) / len(docs)
    out = []
    for d in tokenized:
        tf, s = Counter(d), 0.0
        for t in re.findall(r"\w+", query.lower()):
            n_t = sum(t in x for x in tokenized)
            idf = math.log(1 + (len(docs) - n_t + 0.5) / (n_t + 0.5))
            norm = k1 * (1 - b + b * len(d) / avgdl)
            s += 0.0 if tf[t] == 0 else idf * tf[t] * (k1 + 1) / (tf[t] + norm)
        out.append(s)
    return out


@pytest.mark.parametrize("k1,b", [(1.2, 0.75), (0.0, 0.5), (2.0, 0.0), (1.5, 1.0)])
def test_bm25_matches_brute_force(k1, b):
    docs = ["The with statement wraps a block", "open a file for appending with mode a",
            "the the the file", "", "Dictionaries map keys to values; keys are hashable"]
    bm = BM25(docs, k1=k1, b=b)
    for query in ("with file", "keys keys values", "nothing matches", "The file mode"):
        assert np.allclose(bm.scores(query), brute_bm25(query, docs, k1, b))
    _, ids = bm.search(["file appending"], 2)
    assert ids[0, 0].item() == 1
    assert terms("Foo_bar, BAZ!") == ["foo_bar", "baz"]
    with pytest.raises(ValueError):
        BM25([])
    with pytest.raises(ValueError):
        BM25(docs, b=2)
    with pytest.raises(ValueError, match="at least one query"):
        bm.search([], 2)


# ----------------------------------------------------------------------------- question set
def test_questions_point_at_passages_that_hold_the_answer():
    docs = dict(list(python_docs().items())[:20])
    chunks = chunk_documents(docs)
    methods = attach_gold(method_questions(docs), chunks)
    headings = attach_gold(heading_questions(docs), chunks)
    assert methods and headings
    for q in methods:
        assert q.answer not in q.text  # the name is not given away
        assert all(f"{q.answer}(" in chunks[i].text for i in q.gold)
    for q in headings:
        assert all(q.answer in chunks[i].text for i in q.gold)
    assert len({q.answer for q in methods}) == len(methods)


def test_checker_and_prompt():
    assert contains_answer("Use `endswith()`.", "endswith")
    assert not contains_answer("use startswith_x", "startswith")
    assert not contains_answer("rendswith", "endswith")
    for empty in ("", "  "):
        with pytest.raises(ValueError):
            contains_answer("anything", empty)
    with pytest.raises(ValueError):
        rag_messages("  ")
    [closed] = rag_messages("Which?")
    assert "Documentation" not in closed["content"]
    chunk = chunk_documents({"with": "The with statement"})[0]
    [opened] = rag_messages("Which?", [chunk])
    assert "(topic: with)" in opened["content"] and "The with statement" in opened["content"]
