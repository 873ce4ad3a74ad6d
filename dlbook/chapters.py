"""The table of contents: chapter scripts found under ``chapters/`` with their parts and titles."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PARTS = {
    "01_basics": "Basics",
    "02_math": "The mathematics of learning",
    "03_architectures": "Architectures",
    "04_pretraining": "Pretraining",
    "05_finetuning": "Fine-tuning",
    "06_applications": "Applications",
}

_TITLE = re.compile(r"^# # (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Chapter:
    """One section of the book: ``chapters/<NN_part>/<NN_section>.py``."""

    path: Path
    part: str
    part_title: str
    title: str

    @property
    def key(self) -> str:
        """Short id such as ``1.3`` (part number, section number)."""
        part_no = int(self.path.parent.name.split("_")[0])
        section_no = int(self.path.name.split("_")[0])
        return f"{part_no}.{section_no}"

    @property
    def slug(self) -> str:
        """The id used on the command line, e.g. ``01_basics/03_mlp``."""
        return f"{self.path.parent.name}/{self.path.stem}"


def chapters_root() -> Path:
    """The ``chapters/`` folder of the repository this package was installed from."""
    root = Path(__file__).resolve().parent.parent / "chapters"
    if not root.is_dir():
        raise FileNotFoundError(
            f"no chapters folder at {root}; the chapters ship with the book's repository, so "
            "install dlbook from a clone with `pip install -e .`"
        )
    return root


def list_chapters(root: Path | None = None) -> list[Chapter]:
    """All chapters in reading order."""
    root = root or chapters_root()
    found = []
    for path in sorted(root.glob("[0-9][0-9]_*/[0-9][0-9]_*.py")):
        match = _TITLE.search(path.read_text(encoding="utf-8"))
        title = match.group(1).strip() if match else path.stem
        part = path.parent.name
        found.append(Chapter(path, part, PARTS.get(part, part), title))
    return found


def find_chapter(query: str, root: Path | None = None) -> Chapter:
    """Find a chapter by key (``1.3``), slug (``01_basics/03_mlp``), file stem or path.

    Raises:
        LookupError: nothing, or more than one chapter, matches.
    """
    chapters = list_chapters(root)
    query_path = Path(query)
    if query_path.suffix == ".py" and query_path.is_file():
        return Chapter(query_path, query_path.parent.name, "", query_path.stem)
    matches = [
        c for c in chapters if query in (c.key, c.slug, c.path.stem, c.path.stem.split("_", 1)[-1])
    ]
    if len(matches) != 1:
        known = ", ".join(f"{c.key} ({c.slug})" for c in chapters)
        what = "no chapter" if not matches else "several chapters"
        raise LookupError(f"{what} match {query!r}; chapters are: {known}")
    return matches[0]
