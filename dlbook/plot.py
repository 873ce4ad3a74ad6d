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
