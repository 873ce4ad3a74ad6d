"""Build the site (smoke profile) and check it the way a reader sees it: in a headless browser.

Checks: the build passes with warnings as errors; every page loads with no request leaving the
machine; math is typeset by the vendored MathJax with no errors; every image loads; every
internal link and anchor resolves; each chapter offers its .py and .ipynb; the execution-time
page lists every chapter; the execution cache is keyed on the library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from dlbook.chapters import list_chapters

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.site


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(
        os.environ,
        DLBOOK_PROFILE="smoke",
        DLBOOK_NB_CACHE=str(out / "cache"),
        DLBOOK_CACHE=str(out / "dlbook-cache"),
    )
    env.pop("MPLBACKEND", None)  # in a kernel, figures must use the inline backend
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-b",
            "html",
            "-q",
            str(DOCS),
            str(out / "html"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, f"site build failed:\n{proc.stderr[-6000:]}"
    return out / "html"


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])


def _parse(path: Path) -> _Anchors:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _content_pages(html: Path) -> list[Path]:
    skip = {"genindex.html", "search.html"}
    return sorted(
        p
        for p in html.rglob("*.html")
        if p.name not in skip and not p.relative_to(html).parts[0].startswith("_")
    )


def test_internal_links_resolve(site):
    broken = []
    parsed: dict[Path, _Anchors] = {}
    for page in _content_pages(site):
        for href in _parse(page).links:
            parts = urlsplit(href)
            if parts.scheme or href.startswith("mailto:"):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)} -> {href}")
                continue
            if parts.fragment and target.suffix == ".html":
                anchors = parsed.setdefault(target, _parse(target))
                if unquote(parts.fragment) not in anchors.ids:
                    broken.append(f"{page.relative_to(site)} -> {href} (no such anchor)")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:30])


def test_every_chapter_is_rendered_with_downloads(site):
    for chapter in list_chapters():
        page = site / "chapters" / chapter.part / f"{chapter.path.stem}.html"
        assert page.is_file(), f"{chapter.slug} is not on the site"
        links = _parse(page).links
        for suffix in (".py", ".ipynb"):
            found = [h for h in links if h.endswith(f"{chapter.path.stem}{suffix}")]
            assert found, f"{chapter.slug}: no {suffix} download link"
            assert (page.parent / unquote(found[0])).resolve().is_file()


def test_exec_table_lists_every_chapter(site):
    text = (site / "exec-times.html").read_text(encoding="utf-8")
    for chapter in list_chapters():
        assert f"chapters/{chapter.part}/{chapter.path.stem}" in text


def test_pages_in_a_headless_browser(site):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed for the site check: run `make setup`"
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    pages = _content_pages(site)
    chapter_pages = {site / "chapters" / c.part / f"{c.path.stem}.html" for c in list_chapters()}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        context = browser.new_context()
        outside: list[str] = []
        context.on(
            "request",
            lambda r: outside.append(r.url) if not r.url.startswith(("file:", "data:")) else None,
        )
        page = context.new_page()
        for path in pages:
            name = str(path.relative_to(site))
            page.goto(path.as_uri(), wait_until="load")
            page.wait_for_function(
                "() => !document.querySelector('.math') || "
                "(window.MathJax && MathJax.startup && MathJax.startup.document && "
                "document.querySelectorAll('mjx-container').length > 0)",
                timeout=30_000,
            )
            page.evaluate("() => window.MathJax && MathJax.startup.promise")
            facts = page.evaluate(
                """() => ({
                    math: document.querySelectorAll('span.math, div.math').length,
                    typeset: document.querySelectorAll('mjx-container').length,
                    errors: document.querySelectorAll('mjx-merror, [data-mjx-error]').length,
                    images: [...document.querySelectorAll('main img')].map(
                        i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0})),
                })"""
            )
            if facts["math"] and facts["typeset"] < facts["math"]:
                problems.append(f"{name}: {facts['typeset']} of {facts['math']} formulas typeset")
            if facts["errors"]:
                problems.append(f"{name}: {facts['errors']} MathJax errors")
            problems += [
                f"{name}: image {i['src']} did not load" for i in facts["images"] if not i["ok"]
            ]
            if path in chapter_pages and not facts["images"]:
                problems.append(f"{name}: a chapter page without a single figure")
        browser.close()
    assert not outside, f"pages made requests off the machine: {sorted(set(outside))[:10]}"
    assert not problems, "\n".join(problems)
    assert any(p in chapter_pages for p in pages)


def test_execution_cache_is_keyed_on_library_and_profile(monkeypatch):
    """jupyter-cache hashes code cells and the kernelspec; our reader puts the library there."""
    sys.path.insert(0, str(DOCS / "_ext"))
    import dlbook_sphinx
    from jupyter_cache.cache.main import JupyterCacheBase

    text = list_chapters()[0].path.read_text(encoding="utf-8")
    cache = JupyterCacheBase.__new__(JupyterCacheBase)

    def key() -> str:
        return cache.create_hashed_notebook(dlbook_sphinx.read_chapter(text))[1]

    monkeypatch.setenv("DLBOOK_PROFILE", "book")
    original = key()
    assert key() == original  # stable when nothing changes
    monkeypatch.setattr(dlbook_sphinx, "library_fingerprint", lambda: "changed-library")
    assert key() != original
    monkeypatch.undo()
    monkeypatch.setenv("DLBOOK_PROFILE", "smoke")
    assert key() != original
