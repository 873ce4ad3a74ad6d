"""Sphinx glue for dlbook: read chapter scripts, key the execution cache, offer downloads.

* :func:`read_chapter` turns a jupytext percent script into a notebook and writes a fingerprint
  of the ``dlbook`` library and the active profile into its kernelspec. jupyter-cache hashes the
  code cells *and the kernelspec*, so a change to the library or the profile re-executes the
  chapters instead of serving stale outputs from the cache.
* On ``builder-inited`` each chapter is also written as an ``.ipynb`` under ``_generated/``, and
  on ``source-read`` a note with ``.py`` and ``.ipynb`` download links is put under its title.
* On ``html-page-context`` two accessibility repairs (axe-core, run by ``tests/test_site.py``):
  the sidebar's disclosure toggles get an accessible name (:func:`label_toctree_toggles`), and
  bibliography entries get ARIA's ``listitem`` role instead of the deprecated
  ``doc-biblioentry`` (:func:`fix_citation_roles`).
"""

from __future__ import annotations

import functools
import hashlib
import html
import os
import re
from functools import lru_cache
from pathlib import Path

import jupytext
import nbformat
from sphinx.application import Sphinx
from sphinx.errors import ConfigError

DOCS = Path(__file__).resolve().parent.parent
REPO = DOCS.parent
CHAPTERS = REPO / "chapters"
GENERATED = DOCS / "_generated" / "ipynb"
MATHJAX = DOCS / "_static" / "vendor" / "mathjax" / "tex-svg-full.js"
CELL = "# %%"


@lru_cache(maxsize=1)
def library_fingerprint() -> str:
    """SHA-256 over every source file of the ``dlbook`` package (paths and contents)."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "dlbook").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def execution_key() -> str:
    """What, besides the code cells, decides a chapter's outputs: library and profile."""
    return f"dlbook-{library_fingerprint()}-{os.environ.get('DLBOOK_PROFILE', 'book')}"


def read_chapter(text: str) -> nbformat.NotebookNode:
    """Read a percent script as a notebook whose kernelspec carries :func:`execution_key`."""
    nb = jupytext.reads(text, fmt="py:percent")
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
        "dlbook_execution_key": execution_key(),
    }
    return nb


def _chapter_files() -> list[Path]:
    return sorted(CHAPTERS.glob("[0-9][0-9]_*/[0-9][0-9]_*.py"))


def _write_notebooks(app: Sphinx) -> None:
    if not MATHJAX.is_file():
        raise ConfigError(
            f"MathJax is not vendored at {MATHJAX}; run `make setup` (it copies MathJax 3 from "
            "the npm registry so that math renders without a network)"
        )
    for path in _chapter_files():
        target = GENERATED / path.parent.name / f"{path.stem}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        notebook = jupytext.writes(read_chapter(path.read_text(encoding="utf-8")), fmt="ipynb")
        if not target.is_file() or target.read_text(encoding="utf-8") != notebook:
            target.write_text(notebook, encoding="utf-8")


def add_download_links(text: str, stem: str, part: str) -> str:
    """Insert a markdown cell with download links after the first cell of a percent script."""
    first = text.find(CELL)
    second = text.find(CELL, first + len(CELL))
    if first != 0:
        raise ValueError("a chapter must start with a `# %% [markdown]` cell holding its title")
    note = (
        f"{CELL} [markdown]\n"
        "# ```{note}\n"
        f"# Run this section yourself: {{download}}`{stem}.py <{stem}.py>` (script) · "
        f"{{download}}`{stem}.ipynb </_generated/ipynb/{part}/{stem}.ipynb>` (notebook). "
        "The profile is chosen with `DLBOOK_PROFILE=smoke|book|full`.\n"
        "# ```\n\n"
    )
    if second == -1:
        return text.rstrip("\n") + "\n\n" + note
    return text[:second] + note + text[second:]


def _on_source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    if docname.startswith("chapters/"):
        _, part, stem = docname.split("/")
        source[0] = add_download_links(source[0], stem, part)


# A sidebar entry with children: its link, then a <details> whose <summary> holds only a chevron.
_TOGGLE = re.compile(
    r"(<a [^>]*>(?P<title>(?:(?!</a>).)*)</a>)"
    r"(?P<details><details[^>]*>)<summary>"
)


def label_toctree_toggles(page: str) -> str:
    """Name each sidebar disclosure toggle after its entry: ``<summary aria-label="…">``.

    The theme's ``<summary>`` holds only a decorative chevron, so screen readers announce an
    unnamed control (WCAG 4.1.2, axe ``summary-name``). Idempotent: a labelled summary no longer
    matches.
    """

    def label(match: re.Match[str]) -> str:
        title = html.unescape(re.sub(r"<[^>]+>", "", match["title"])).strip()
        name = html.escape(f"Show or hide the sections of {title}", quote=True)
        return f'{match[1]}{match["details"]}<summary aria-label="{name}">'

    return _TOGGLE.sub(label, page)


def fix_citation_roles(body: str) -> str:
    """Give bibliography entries the ``listitem`` role their ``role="list"`` parent requires.

    docutils writes ``<div role="list" class="citation-list">`` around entries with the
    deprecated ``role="doc-biblioentry"``, which ARIA does not allow as a list's child (axe
    ``aria-required-children``, critical).
    """
    return body.replace(' role="doc-biblioentry"', ' role="listitem"')


def _accessible_page(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    if "body" in context:
        context["body"] = fix_citation_roles(context["body"])
    generate = context.get("generate_toctree_html")
    if generate is None or getattr(generate, "dlbook_labelled", False):
        return

    @functools.wraps(generate)
    def labelled(kind: str, *args, **kwargs):
        out = generate(kind, *args, **kwargs)
        # "sidebar" gives a BeautifulSoup tree that the template prints; "raw" callers want the
        # tree itself.
        return label_toctree_toggles(str(out)) if kind == "sidebar" else out

    labelled.dlbook_labelled = True  # type: ignore[attr-defined]
    context["generate_toctree_html"] = labelled


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("builder-inited", _write_notebooks)
    app.connect("source-read", _on_source_read)
    # After the theme (priority 500) has put generate_toctree_html into the page's context.
    app.connect("html-page-context", _accessible_page, priority=900)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
