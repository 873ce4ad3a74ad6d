"""Every chapter script runs top to bottom in the smoke profile, as a plain Python script."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import cache_with_shared_hub

from dlbook.chapters import find_chapter, list_chapters

CHAPTERS = list_chapters()


def test_chapters_are_found_in_order():
    keys = [c.key for c in CHAPTERS]
    assert keys[:5] == ["1.1", "1.2", "1.3", "1.4", "1.5"]
    assert all(c.title != c.path.stem for c in CHAPTERS), "every chapter starts with `# # Title`"
    assert find_chapter("1.4").path.name == "04_training_loop.py"
    with pytest.raises(LookupError, match="no chapter"):
        find_chapter("9.9")


@pytest.mark.chapter
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.slug for c in CHAPTERS])
def test_chapter_runs_in_smoke_profile(chapter, tmp_path, shared_hub):
    cache = cache_with_shared_hub(tmp_path / "cache", shared_hub)
    env = dict(
        os.environ,
        DLBOOK_PROFILE="smoke",
        MPLBACKEND="Agg",
        DLBOOK_CACHE=str(cache),
        PYTHONWARNINGS="ignore::UserWarning:matplotlib",
    )
    proc = subprocess.run(
        [sys.executable, chapter.path.name],
        cwd=chapter.path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{chapter.slug} failed:\n{proc.stderr[-4000:]}"


def test_cli_lists_chapters(capsys):
    from dlbook.cli import main

    assert main(["chapters"]) == 0
    out = capsys.readouterr().out
    assert "Part 1: Basics" in out
    assert all(c.title in out for c in CHAPTERS)


def test_cli_run_reports_unknown_chapter(capsys):
    from dlbook.cli import main

    assert main(["run", "42.1"]) == 2
    assert "chapters are:" in capsys.readouterr().err


def test_cli_run_refuses_unknown_profile_from_environment(capsys, monkeypatch):
    from dlbook.cli import main

    monkeypatch.setenv("DLBOOK_PROFILE", "bogus")
    assert main(["run", "1.1"]) == 2  # before the chapter starts, not in a traceback inside it
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'bogus' is not a profile" in err[0]


def test_cli_run_success_path(tmp_path, monkeypatch):
    """`dlbook run` runs the chapter script with the profile and returns its exit status."""
    import dataclasses

    from dlbook import cli

    script = tmp_path / "chapter.py"
    script.write_text(
        "import os, sys\n"
        "open('ran.txt', 'w').write(os.environ['DLBOOK_PROFILE'])\n"
        "sys.exit(3)\n"
    )
    fake = dataclasses.replace(find_chapter("1.1"), path=script)
    monkeypatch.setattr(cli, "find_chapter", lambda key: fake)
    assert cli.main(["run", "1.1", "--profile", "smoke"]) == 3
    assert (tmp_path / "ran.txt").read_text() == "smoke"
