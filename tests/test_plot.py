"""The schematic-drawing helper: boxes, arrows, skip routes and clear errors on bad specs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

from dlbook.plot import DIAGRAM_COLORS, diagram

BOXES = {
    "x": (0, 2, "input", "io"),
    "f": (0, 1, "layer", "linear", 3.0),
    "+": (0, 0, "+", "op"),
}


def test_diagram_draws_every_box_and_arrow():
    fig = diagram(BOXES, [("x", "f"), ("f", "+"), ("x", "+", "skip=2.5")])
    ax = fig.axes[0]
    boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    assert len(boxes) == 2 and sum(isinstance(p, Circle) for p in ax.patches) == 1
    assert sum(isinstance(p, FancyArrowPatch) for p in ax.patches) == 3
    assert {t.get_text() for t in ax.texts} == {"input", "layer", "+"}
    widths = sorted(b.get_width() for b in boxes)
    assert widths == [1.7, 3.0]  # default width, and the per-box override
    facecolors = {matplotlib.colors.to_hex(b.get_facecolor()) for b in boxes}
    assert facecolors == {DIAGRAM_COLORS["io"], DIAGRAM_COLORS["linear"]}
    assert ax.get_xlim()[1] > 2.5  # the skip route is inside the picture
    plt.close(fig)


def test_diagram_rejects_unknown_boxes_and_kinds():
    with pytest.raises(KeyError, match="no box named 'y'"):
        diagram(BOXES, [("x", "y")])
    with pytest.raises(ValueError, match="kind must be one of"):
        diagram({"a": (0, 0, "a", "blue")}, [])
    plt.close("all")
