"""Offline data sets and data helpers."""

from dlbook.data.digits import Splits, load_digits
from dlbook.data.lm import read_tokens, sample_windows, split_tokens, write_tokens
from dlbook.data.mnist import load_mnist_subset
from dlbook.data.optional import MissingDependencyError, require
from dlbook.data.text import CharTokenizer, load_kjv, random_windows
from dlbook.data.textcls import TextClassificationSplit, class_names, load_text_classification

__all__ = [
    "CharTokenizer",
    "MissingDependencyError",
    "Splits",
    "TextClassificationSplit",
    "class_names",
    "load_digits",
    "load_kjv",
    "load_mnist_subset",
    "load_text_classification",
    "random_windows",
    "read_tokens",
    "require",
    "sample_windows",
    "split_tokens",
    "write_tokens",
]
