"""Tests for dlbook.tokenizers: round trips, special tokens, errors, files, brute-force parity."""

from __future__ import annotations

import functools
import json
import random
from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook.tokenizers import GPT2_SPLIT_PATTERN, ByteBPETokenizer, learn_merges, merge_pair

CORPUS = (
    "In the beginning God created the heaven and the earth. And the earth was without form, "
    "and void; and darkness was upon the face of the deep. It's 1611; they've said 'amen'.\n"
) * 8 + "Naïve café — über straße. 東京 and 北京. 🙂🙂 emoji 🙂\n"
EOT = "<|endoftext|>"


@functools.cache
def trained() -> ByteBPETokenizer:
    return ByteBPETokenizer.train(CORPUS, 350, special_tokens=[EOT, "<|pad|>"])


# --------------------------------------------------------------------------- brute force


def brute_force_merges(text: str, num_merges: int) -> list[tuple[int, int]]:
    """Recount every pair over every pre-token occurrence (no weights, no cache) each step."""
    seqs = [list(w.encode("utf-8")) for w in regex.findall(GPT2_SPLIT_PATTERN, text)]
    merges: list[tuple[int, int]] = []
    for k in range(num_merges):
        counts: Counter = Counter()
        for s in seqs:
            for i in range(len(s) - 1):
                counts[(s[i], s[i + 1])] += 1
        if not counts:
            break
        top = max(counts.values())
        best = min(p for p, c in counts.items() if c == top)
        merges.append(best)
        seqs = [merge_pair(s, best, 256 + k) for s in seqs]
    return merges


def brute_force_encode(text: str, merges: list[tuple[int, int]]) -> list[int]:
    """Apply every merge, in training order, to every pre-token (no ranks, no cache)."""
    out: list[int] = []
    for w in regex.findall(GPT2_SPLIT_PATTERN, text):
        ids = list(w.encode("utf-8"))
        for k, pair in enumerate(merges):
            ids = merge_pair(ids, pair, 256 + k)
        out.extend(ids)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_training_and_encoding_match_brute_force(seed):
    rng = random.Random(seed)
    words = ["ab", "aab", "ba", "abc", "ccc", "a", "cab", "é", "🙂"]
    text = " ".join(rng.choice(words) for _ in range(300)) + "!! aaaa"
    tok = ByteBPETokenizer.train(text, 256 + 40, special_tokens=())
    assert tok.merges == brute_force_merges(text, 40)
    other = " ".join(rng.choice(words + ["abcab", "xyz"]) for _ in range(50))
    for s in (text, other, "aaaaaaa bcbcbc"):
        assert tok.encode(s) == brute_force_encode(s, tok.merges)


def test_real_text_matches_brute_force():
    tok = trained()
    merges = brute_force_merges(CORPUS, len(tok.merges))
    assert tok.merges == merges
    s = "And God said, Let there be light: and there was light. Straße 🙂!"
    assert tok.encode(s) == brute_force_encode(s, merges)


def test_merge_pair():
    assert merge_pair([1, 2, 1, 2, 2], (1, 2), 9) == [9, 9, 2]
    assert merge_pair([5, 5, 5], (5, 5), 7) == [7, 5]
    assert merge_pair([], (1, 2), 9) == []


def test_learn_merges_weights_counts():
    # "ab" once but weighted 10 beats "cd" three times
    assert learn_merges({"ab": 10, "cd": 3}, 1) == [(ord("a"), ord("b"))]
    assert learn_merges({"ab": 1, "cd": 3}, 1) == [(ord("c"), ord("d"))]


# --------------------------------------------------------------------------- round trips


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_any_unicode(s):
    tok = trained()
    ids = tok.encode_ordinary(s)  # hypothesis does find "<|endoftext|>" among its strings
    assert all(0 <= i < 256 + len(tok.merges) for i in ids)
    assert tok.decode(ids) == s
    assert tok.decode_bytes(ids) == s.encode("utf-8")
    assert tok.decode(tok.encode(s, allowed_special="all")) == s


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["the", " earth", EOT, "🙂", "\n", " 北京", "x"]), max_size=20))
def test_round_trip_with_specials(parts):
    tok = trained()
    s = "".join(parts)
    ids = tok.encode(s, allowed_special="all")
    assert tok.decode(ids) == s
    assert ids.count(tok.special_tokens[EOT]) == parts.count(EOT)


@pytest.mark.parametrize(
    "s",
    [
        "",
        " ",
        "\n\n",
        "Ἐν ἀρχῇ ἦν ὁ λόγος",
        "ᏣᎳᎩ",
        "👨‍👩‍👧🙏🏽",
        "\x00\t\r\n",
        "a" * 1000,
        "\u200b\ufeff",
    ],
)
def test_round_trip_unseen_scripts(s):
    tok = trained()
    assert tok.decode(tok.encode(s)) == s


def test_merges_reduce_length_on_training_text():
    n_bytes = len(CORPUS.encode("utf-8"))
    lengths = [
        len(ByteBPETokenizer.train(CORPUS, v, special_tokens=()).encode(CORPUS))
        for v in (256, 300, 350, 400)
    ]
    assert lengths[0] == n_bytes
    assert all(b < a for a, b in zip(lengths, lengths[1:], strict=False))
    assert lengths[-1] < n_bytes / 2


def test_training_stops_when_pairs_run_out():
    tok = ByteBPETokenizer.train("ab ab", 1000, special_tokens=[EOT])
    assert len(tok.merges) == 2  # a+b, then " "+ab; no pair is left to merge
    assert tok.vocab_size == 256 + 2 + 1
    assert tok.decode(tok.encode(" ab ab")) == " ab ab"


# --------------------------------------------------------------------------- special tokens


def test_special_tokens_encode_to_their_id():
    tok = trained()
    eot, pad = tok.special_tokens[EOT], tok.special_tokens["<|pad|>"]
    assert (eot, pad) == (256 + len(tok.merges), 256 + len(tok.merges) + 1)
    assert tok.vocab_size == pad + 1
    assert tok.encode(EOT, allowed_special={EOT}) == [eot]
    ids = tok.encode(f"the end{EOT}<|pad|>the", allowed_special="all")
    assert ids.count(eot) == 1 and ids.count(pad) == 1
    assert tok.decode(ids) == f"the end{EOT}<|pad|>the"
    # encode_ordinary spells it out with ordinary ids
    plain = tok.encode_ordinary(EOT)
    assert eot not in plain and tok.decode(plain) == EOT


def test_specials_are_not_merged_in_training():
    text = ("hello" + EOT) * 50
    tok = ByteBPETokenizer.train(text, 300, special_tokens=[EOT])
    tokens = {tok.token_bytes(256 + k) for k in range(len(tok.merges))}
    assert not any(b"|" in t or b"<" in t for t in tokens)
    assert b"hello" in tokens


def test_longest_special_wins():
    tok = ByteBPETokenizer.train("abc", 300, special_tokens=["<s>", "<s><s>"])
    ids = tok.encode("<s><s><s>", allowed_special="all")
    assert ids == [tok.special_tokens["<s><s>"], tok.special_tokens["<s>"]]


# --------------------------------------------------------------------------- errors


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="too small"):
        ByteBPETokenizer.train(CORPUS, 256, special_tokens=[EOT])
    with pytest.raises(ValueError, match="at least 256"):
        ByteBPETokenizer.train(CORPUS, 100, special_tokens=())


def test_empty_corpus():
    with pytest.raises(ValueError, match="empty corpus"):
        ByteBPETokenizer.train("", 300)


def test_disallowed_special_names_it():
    tok = trained()
    with pytest.raises(ValueError, match=r"<\|endoftext\|>"):
        tok.encode(f"hi{EOT}")
    with pytest.raises(ValueError, match=r"<\|pad\|>"):
        tok.encode(f"hi{EOT}<|pad|>", allowed_special={EOT})
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode("hi", allowed_special={"<|unknown|>"})
    with pytest.raises(ValueError, match="neither 'all' nor"):
        tok.encode("hi", allowed_special="<|unknown|>")
    assert tok.encode(EOT, allowed_special=EOT) == [tok.special_tokens[EOT]]


def test_decode_accepts_tensors():
    torch = pytest.importorskip("torch")
    tok = trained()
    ids = tok.encode(f"the earth{EOT}", allowed_special="all")
    assert tok.decode(torch.tensor(ids)) == f"the earth{EOT}"


@pytest.mark.parametrize("bad", [-1, 350, 10**9])
def test_decode_unknown_id_names_it(bad):
    tok = trained()
    assert tok.vocab_size == 350
    with pytest.raises(ValueError, match=f"unknown token id {bad}"):
        tok.decode([65, bad])


def test_lone_surrogate_is_refused():
    with pytest.raises(ValueError, match="surrogate"):
        trained().encode("a\ud800b")


def test_bad_merges_refused():
    with pytest.raises(ValueError, match="merge 0"):
        ByteBPETokenizer([(256, 1)])
    with pytest.raises(ValueError, match="special tokens"):
        ByteBPETokenizer([], ["<a>", "<a>"])
    with pytest.raises(ValueError, match="not the string"):
        ByteBPETokenizer.train("abc", 300, special_tokens="<a>")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        ByteBPETokenizer([], pattern="(unclosed")


# --------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path):
    tok = trained()
    path = tok.save(tmp_path / "sub" / "tok.json")
    again = ByteBPETokenizer.load(path)
    assert again.merges == tok.merges
    assert again.special_tokens == tok.special_tokens
    assert again.vocab_size == tok.vocab_size
    s = CORPUS + EOT + "unseen: Ἐν ἀρχῇ 🙏🏽"
    assert again.encode(s, allowed_special="all") == tok.encode(s, allowed_special="all")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["tok.json"]  # no temp file left


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"merges": [[1, 2]', "not valid JSON"),
        ("\xff\xfe garbage", "not valid JSON"),
        ('{"type": "char", "chars": ["a"]}', "not a dlbook.ByteBPETokenizer"),
        ("[1, 2, 3]", "not a dlbook.ByteBPETokenizer"),
        (
            '{"format": "dlbook.ByteBPETokenizer", "version": 99, "merges": []}',
            "format version 99",
        ),
        (
            '{"format": "dlbook.ByteBPETokenizer", "version": 1, "merges": [[1]], '
            '"special_tokens": [], "pattern": "."}',
            "malformed",
        ),
        (
            '{"format": "dlbook.ByteBPETokenizer", "version": 1, "merges": [[300, 1]], '
            '"special_tokens": [], "pattern": "."}',
            "merge 0",
        ),
    ],
)
def test_load_refuses_corrupt_or_foreign_files(tmp_path, content, match):
    path = tmp_path / "tok.json"
    if content.startswith("\xff"):
        path.write_bytes(b"\xff\xfe garbage")
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=match):
        ByteBPETokenizer.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        ByteBPETokenizer.load(tmp_path / "nope.json")


def test_saved_file_is_plain_json(tmp_path):
    data = json.loads(trained().save(tmp_path / "t.json").read_text())
    assert data["format"] == "dlbook.ByteBPETokenizer" and data["pattern"] == GPT2_SPLIT_PATTERN
    assert data["special_tokens"] == [EOT, "<|pad|>"]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz ,.'\n🙂é", max_size=200))
def test_more_merges_never_lengthen_any_text(s):
    """Encoding with merges 1..M+k == encoding with 1..M, then applying merges M+1..M+k."""
    tok = trained()
    step = 8
    for chunk in regex.findall(GPT2_SPLIT_PATTERN, s):
        prev = None
        for m in range(0, len(tok.merges) + 1, step):
            ids = ByteBPETokenizer(tok.merges[:m]).encode_ordinary(chunk)
            if prev is not None:
                assert len(ids) <= len(prev)
                for j in range(m - step, m):  # replay the merges in between, one at a time
                    prev = merge_pair(prev, tok.merges[j], 256 + j)
                assert ids == prev
            prev = ids


@pytest.mark.parametrize("ids", [[True], [65, False], [65.0], [1.5]])
def test_decode_refuses_non_integer_ids(ids):
    tok = trained()
    with pytest.raises(ValueError, match="token ids are integers"):
        tok.decode(ids)
    assert tok.decode([65, 66]) == "AB"
