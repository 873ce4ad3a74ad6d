"""Sphinx configuration of the dlbook site.

Chapters live in ``../chapters`` (reached through the ``chapters`` symlink) as jupytext percent
scripts; ``_ext/dlbook_sphinx.py`` reads them, adds download links, and keys the execution cache
on the library and profile as well as on the code cells.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

project = "Building Large Models from Scratch with PyTorch 2"
author = "The dlbook authors"
copyright = "2026, the dlbook authors"

extensions = [
    "myst_nb",
    "sphinx_book_theme",
    "sphinx_copybutton",
    "sphinx_design",
    "sphinx_exercise",
    "sphinxcontrib.bibtex",
    "dlbook_sphinx",
]

# --- sources ----------------------------------------------------------------------------------
nb_custom_formats = {".py": ["dlbook_sphinx.read_chapter", {}]}
exclude_patterns = [
    "_build",
    "_generated",
    "_ext",
    "conf.py",
    "**/__pycache__",
    "**/.ipynb_checkpoints",
    "Thumbs.db",
    ".DS_Store",
]
# DLBOOK_DOCS_ONLY="02_math/01_*" builds only the chapters matching that glob (for authors).
if only := os.environ.get("DLBOOK_DOCS_ONLY"):
    keep = {p.relative_to(DOCS) for p in DOCS.glob(f"chapters/{only}")}
    exclude_patterns += [
        str(p.relative_to(DOCS))
        for p in DOCS.glob("chapters/*/*.py")
        if p.relative_to(DOCS) not in keep
    ]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Chapters run in Jupyter kernels that inherit this environment: a non-interactive backend set
# for scripts (MPLBACKEND=Agg) would keep figures off the pages.
os.environ.pop("MPLBACKEND", None)

# --- execution (see DESIGN.md: cache keyed on code, library and profile) ------------------------
nb_execution_mode = os.environ.get("DLBOOK_NB_EXECUTION", "cache")
nb_execution_cache_path = os.environ.get(
    "DLBOOK_NB_CACHE",
    str(DOCS / "_build" / f".jupyter_cache-{os.environ.get('DLBOOK_PROFILE', 'book')}"),
)
nb_execution_timeout = 3600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_output_stderr = "remove"  # progress bars and warnings go to stderr; the page shows results
nb_merge_streams = True

# --- math, offline: MathJax 3 SVG output, served from _static (fetched by `make setup`) ---------
mathjax_path = "vendor/mathjax/tex-svg-full.js"
mathjax3_config = {
    "tex": {"tags": "ams"},
    "svg": {"fontCache": "global"},
}

# --- bibliography ------------------------------------------------------------------------------
bibtex_bibfiles = ["references.bib"]
bibtex_default_style = "plain"
bibtex_reference_style = "author_year"

# --- theme -------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "dlbook"
html_static_path = ["_static"]
templates_path = ["_templates"]  # search-button-field.html: see the file for why
html_css_files = ["dlbook.css"]
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,  # each chapter links its own .py and .ipynb downloads
    "use_fullscreen_button": False,
    "home_page_in_toc": True,
}
html_last_updated_fmt = None
numfig = True
numfig_secnum_depth = 2  # figures and exercises numbered per section: Exercise 1.4.2
suppress_warnings = ["mystnb.unknown_mime_type"]
