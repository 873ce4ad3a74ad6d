"""Tests of dlbook.book: glue (as a script and in a notebook) and error_message."""

from __future__ import annotations

import sys
import types

import pytest

from dlbook import book


@pytest.mark.parametrize(
    "value, fmt, shown",
    [(0.123456, ".3f", "0.123"), (1234567, ",", "1,234,567"), (0.256, ".1%", "25.6%"),
     ("text", None, "text"), (7, None, "7")],
)
def test_glue_as_a_script_prints_the_formatted_value(capsys, value, fmt, shown):
    book.glue("s0_name", value, fmt)
    assert capsys.readouterr().out == f"[glue] s0_name = {shown}\n"


def test_glue_in_a_notebook_publishes_to_myst_nb(monkeypatch):
    calls = []
    fake = types.ModuleType("myst_nb")
    fake.glue = lambda name, value, display=True: calls.append((name, value, display))
    monkeypatch.setitem(sys.modules, "myst_nb", fake)
    monkeypatch.setattr(book, "_in_notebook", lambda: True)
    book.glue("s0_loss", 2.71828, ".2f")
    book.glue("s0_list", [1, 2])
    (name, value, display), (name2, value2, _) = calls
    assert (name, repr(value), display) == ("s0_loss", "2.72", False)  # text, no quotes
    assert name2 == "s0_list" and value2 == [1, 2]  # unformatted values pass through


def test_glue_bad_format_is_an_error():
    with pytest.raises(ValueError):
        book.glue("s0_bad", "text", ".3f")


def test_error_message():
    assert book.error_message(lambda: int("x")).startswith("invalid literal")
    with pytest.raises(AssertionError, match="expected ValueError"):
        book.error_message(lambda: 1)
    with pytest.raises(KeyError):
        book.error_message(lambda: {}["k"])  # another error type is not swallowed
