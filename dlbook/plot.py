"""Plotting helpers shared by chapters. Imports nothing else from dlbook."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch


def plot_curves(
    curves: Mapping[str, Sequence[float]],
    *,
    xlabel: str = "epoch",
    ylabel: str = "",
    title: str = "",
    ax: Axes | None = None,
    logy: bool = False,
) -> Axes:
    """Plot named series against 1, 2, 3, … (e.g. train and validation loss per epoch)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    for name, values in curves.items():
        ax.plot(
            range(1, len(values) + 1), values, label=name, marker="." if len(values) < 40 else None
        )
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def flow_diagram(
    steps: Sequence[str], notes: Sequence[str] | None = None, *, width: float = 13.0
) -> Figure:
    """Draw ``steps`` as a left-to-right chain of boxes joined by arrows, ``notes`` under each."""
    n = len(steps)
    fig, ax = plt.subplots(figsize=(width, 2.2))
    ax.set_xlim(0, n)
    ax.set_ylim(0, 1)
    ax.axis("off")
    for i, label in enumerate(steps):
        box = FancyBboxPatch(
            (i + 0.08, 0.45),
            0.84,
            0.4,
            boxstyle="round,pad=0.02",
            facecolor=plt.cm.viridis(0.15 + 0.7 * i / max(n - 1, 1)),
            alpha=0.35,
            edgecolor="black",
        )
        ax.add_patch(box)
        ax.text(i + 0.5, 0.65, label, ha="center", va="center", fontsize=11, wrap=True)
        if notes:
            ax.text(i + 0.5, 0.25, notes[i], ha="center", va="center", fontsize=9.5, color="0.25")
        if i < n - 1:
            ax.add_patch(
                FancyArrowPatch(
                    (i + 0.93, 0.65), (i + 1.07, 0.65), arrowstyle="-|>", mutation_scale=12
                )
            )
    fig.tight_layout()
    return fig


# Fill colours of diagram boxes by kind: light tints (black text on them has a contrast ratio
# above 12:1), told apart by hue for colour vision and by the box text for everyone else.
DIAGRAM_COLORS = {
    "io": "#eeeeee",
    "conv": "#cfe3f4",
    "pool": "#d9ecd2",
    "linear": "#fde2c4",
    "norm": "#efdcf2",
    "act": "#fff3b8",
    "attn": "#f9d3d0",
    "op": "#ffffff",
}


def diagram(
    boxes: Mapping[str, tuple],
    arrows: Sequence[tuple[str, str] | tuple[str, str, str]],
    *,
    size: tuple[float, float] = (6.0, 4.0),
    box: tuple[float, float] = (1.7, 0.5),
    title: str = "",
    fontsize: float = 10.0,
) -> Figure:
    """Draw a schematic (an architecture, a data flow) as labelled boxes joined by arrows.

    Args:
        boxes: ``name -> (x, y, text[, kind[, width]])``, centres in data units; ``kind``
            picks the fill from :data:`DIAGRAM_COLORS` (default ``"io"``), ``width`` overrides
            ``box[0]`` for a box with longer text. A name that starts with ``"+"`` is drawn as
            a small circle (a sum) with its text inside.
        arrows: ``(source, target)`` or ``(source, target, style)``: ``style`` is a matplotlib
            connection style (``"arc3,rad=0.3"``, ``"angle,angleA=0,angleB=90"``) or
            ``"skip=DX"``, a residual connection that leaves the source's right side, runs
            ``DX`` to the right of it, and enters the target from the right. Arrows end at the
            boxes' edges.
        size: figure size in inches. box: width and height of a box in data units.

    Returns:
        The figure (axes without ticks, equal aspect, limits fitted to the boxes).

    Raises:
        KeyError: if an arrow names a box that is not in ``boxes``.
    """
    fig, ax = plt.subplots(figsize=size)
    width, height = box
    patches = {}
    half_width = {}
    for name, spec in boxes.items():
        x, y, text = spec[:3]
        kind = spec[3] if len(spec) > 3 else "io"
        w = spec[4] if len(spec) > 4 else width
        if kind not in DIAGRAM_COLORS:
            raise ValueError(
                f"box {name!r}: kind must be one of {sorted(DIAGRAM_COLORS)}, not {kind!r}"
            )
        if name.startswith("+"):
            patch = plt.Circle((x, y), 0.17, facecolor="white", edgecolor="black", lw=1.2)
            half_width[name] = 0.17
        else:
            patch = FancyBboxPatch(
                (x - w / 2, y - height / 2),
                w,
                height,
                boxstyle="round,pad=0.04",
                facecolor=DIAGRAM_COLORS[kind],
                edgecolor="black",
                lw=1.0,
            )
            half_width[name] = w / 2 + 0.04
        ax.add_patch(patch)
        patches[name] = patch
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color="black")
    for arrow in arrows:
        source, target = arrow[0], arrow[1]
        for end in (source, target):
            if end not in patches:
                raise KeyError(f"arrow {source!r} -> {target!r}: no box named {end!r}")
        style = arrow[2] if len(arrow) > 2 else "arc3"
        start, stop = boxes[source][:2], boxes[target][:2]
        if style.startswith("skip="):
            dx = float(style.removeprefix("skip="))
            (xs, ys), (xt, yt) = start, stop
            route = [
                (xs + half_width[source], ys),
                (xs + dx, ys),
                (xs + dx, yt),
                (xt + half_width[target], yt),
            ]
            ax.plot(*zip(*route[:-1], strict=True), color="black", lw=1.1)
            ax.add_patch(
                FancyArrowPatch(
                    route[-2],
                    route[-1],
                    arrowstyle="-|>",
                    mutation_scale=12,
                    color="black",
                    lw=1.1,
                    shrinkA=0,
                    shrinkB=0,
                )
            )
            continue
        ax.add_patch(
            FancyArrowPatch(
                start,
                stop,
                patchA=patches[source],
                patchB=patches[target],
                arrowstyle="-|>",
                mutation_scale=12,
                connectionstyle=style,
                color="black",
                lw=1.1,
                shrinkA=1,
                shrinkB=1,
            )
        )
    lefts = [spec[0] - half_width[name] for name, spec in boxes.items()]
    rights = [spec[0] + half_width[name] for name, spec in boxes.items()]
    skips = [
        float(a[2].removeprefix("skip=")) + boxes[a[0]][0]
        for a in arrows
        if len(a) > 2 and a[2].startswith("skip=")
    ]
    ys = [spec[1] for spec in boxes.values()]
    ax.set_xlim(min(lefts) - 0.2, max(rights + skips) + 0.2)
    ax.set_ylim(min(ys) - height * 0.7, max(ys) + height * 0.7)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=fontsize + 1)
    fig.tight_layout()
    return fig
