"""Build the site (smoke profile) and check it the way a reader sees it: in a headless browser.

Checks: the build passes with warnings as errors; every page loads with no request leaving the
machine; math is typeset by the vendored MathJax with no errors; every image loads; axe-core
finds no serious or critical accessibility violation on any page; every internal link and
anchor resolves; each chapter offers its .py and .ipynb; the execution-time page lists every
chapter; the execution cache is keyed on the library.
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
from conftest import cache_with_shared_hub

from dlbook.chapters import list_chapters

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
AXE = REPO / ".cache" / "vendor" / "axe-core" / "axe.min.js"  # `make setup` fetches it (npm)
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
def site(tmp_path_factory, shared_hub) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(
        os.environ,
        DLBOOK_PROFILE="smoke",
        DLBOOK_NB_CACHE=str(out / "cache"),
        DLBOOK_CACHE=str(cache_with_shared_hub(out / "dlbook-cache", shared_hub)),
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


def _facts_script() -> str:
    return """() => ({
        math: document.querySelectorAll('span.math, div.math').length,
        typeset: document.querySelectorAll('mjx-container').length,
        errors: document.querySelectorAll('mjx-merror, [data-mjx-error]').length,
        images: [...document.querySelectorAll('main img')].map(
            i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0})),
    })"""


# axe-core's rules, run in the page; only what a reader with assistive technology cannot get past
# (impact "serious" or "critical") fails the test.
AXE_RUN = """async () => (await axe.run(document, {resultTypes: ['violations']})).violations
    .filter(v => v.impact === 'serious' || v.impact === 'critical')
    .map(v => `${v.id} (${v.impact}) x${v.nodes.length}: ${v.nodes[0].target.join(' ')}`)"""


@pytest.fixture(scope="module")
def browsed(site) -> dict[str, object]:
    """Open every page (and a search with results) in headless chromium, once, and record what
    the page shows, what it requested, and axe-core's serious and critical violations."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed for the site check: run `make setup`"
    assert AXE.is_file(), f"axe-core is not at {AXE}: run `make setup`"
    from playwright.sync_api import sync_playwright

    pages = _content_pages(site) + [site / "genindex.html", site / "search.html"]
    urls = {str(p.relative_to(site)): p.as_uri() for p in pages}
    urls["search.html?q=attention"] = (site / "search.html").as_uri() + "?q=attention"
    facts: dict[str, dict] = {}
    outside: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        context = browser.new_context()
        context.on(
            "request",
            lambda r: outside.append(r.url) if not r.url.startswith(("file:", "data:")) else None,
        )
        page = context.new_page()
        for name, url in urls.items():
            page.goto(url, wait_until="load")
            page.wait_for_function(
                "() => !document.querySelector('.math') || "
                "(window.MathJax && MathJax.startup && MathJax.startup.document && "
                "document.querySelectorAll('mjx-container').length > 0)",
                timeout=30_000,
            )
            page.evaluate("() => window.MathJax && MathJax.startup.promise")
            if "?q=" in name:  # the results are filled in by script
                page.wait_for_selector("#search-results li", timeout=30_000)
            facts[name] = page.evaluate(_facts_script())
            page.add_script_tag(path=str(AXE))  # inline: no request leaves the page
            facts[name]["axe"] = page.evaluate(AXE_RUN)
        browser.close()
    return {"facts": facts, "outside": outside}


def test_pages_in_a_headless_browser(site, browsed):
    problems: list[str] = []
    chapter_pages = {f"chapters/{c.part}/{c.path.stem}.html" for c in list_chapters()}
    facts = browsed["facts"]
    for name, page in facts.items():
        if page["math"] and page["typeset"] < page["math"]:
            problems.append(f"{name}: {page['typeset']} of {page['math']} formulas typeset")
        if page["errors"]:
            problems.append(f"{name}: {page['errors']} MathJax errors")
        problems += [
            f"{name}: image {i['src']} did not load" for i in page["images"] if not i["ok"]
        ]
        if name in chapter_pages and not page["images"]:
            problems.append(f"{name}: a chapter page without a single figure")
    outside = browsed["outside"]
    assert not outside, f"pages made requests off the machine: {sorted(set(outside))[:10]}"
    assert not problems, "\n".join(problems)
    assert chapter_pages <= set(facts)


def test_no_page_has_a_serious_accessibility_violation(browsed):
    """axe-core (WCAG 2.x A/AA and best practices) finds nothing serious or critical anywhere:
    named disclosure toggles, search buttons whose name includes their visible text, link
    contrast ≥ 4.5:1, bibliography entries that are list items (see ``docs/_ext``)."""
    facts = browsed["facts"]
    assert {"bibliography.html", "genindex.html", "search.html?q=attention"} <= set(facts)
    found = [f"{name}: {v}" for name, page in facts.items() for v in page["axe"]]
    assert not found, "accessibility violations (axe-core):\n" + "\n".join(found[:40])


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


def test_accessibility_repairs_are_targeted_and_idempotent():
    """The two HTML repairs of docs/_ext name each sidebar toggle after its entry and give
    bibliography entries a role a list allows; a second pass changes nothing."""
    sys.path.insert(0, str(DOCS / "_ext"))
    import dlbook_sphinx

    sidebar = (
        '<li><a class="reference internal" href="part1.html">1. Basics &amp; <em>more</em></a>'
        "<details open><summary><span>chevron</span></summary><ul></ul></details></li>"
        '<li><a class="reference internal" href="x.html">Leaf</a></li>'
        '<li><a class="current reference internal" href="#">2. Current</a>'
        '<details open="open"><summary><span>chevron</span></summary></details></li>'
    )
    labelled = dlbook_sphinx.label_toctree_toggles(sidebar)
    assert (
        '<details open><summary aria-label="Show or hide the sections of 1. Basics &amp; more">'
        in (labelled)
    )
    assert '<summary aria-label="Show or hide the sections of 2. Current">' in labelled
    assert labelled.count("aria-label") == 2
    assert dlbook_sphinx.label_toctree_toggles(labelled) == labelled
    body = '<div role="list"><div class="citation" id="a" role="doc-biblioentry"></div></div>'
    fixed = dlbook_sphinx.fix_citation_roles(body)
    assert fixed == '<div role="list"><div class="citation" id="a" role="listitem"></div></div>'
    assert dlbook_sphinx.fix_citation_roles(fixed) == fixed
