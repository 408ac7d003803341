"""Checks that a matplotlib figure reads at a glance, shared by the plot tests: titled, every
axis that shows tick labels has a label, legends name distinct things, no two texts overlap
(tick labels included, measured on the rendered figure), and ``dopd``'s line is on top."""

from __future__ import annotations

from itertools import combinations

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.transforms import Bbox


def visible_texts(fig: Figure) -> list[Text]:
    """Every drawn text of the figure: titles, axis labels, legend entries, annotations and
    the tick labels of :func:`tick_labels`."""
    fig.canvas.draw()
    ticks: set[int] = set()
    drawn: list[Text] = []
    for ax in fig.axes:
        for axis in ("x", "y"):
            for tick in [*ax.xaxis.get_major_ticks(), *ax.xaxis.get_minor_ticks(),
                         *ax.yaxis.get_major_ticks(), *ax.yaxis.get_minor_ticks()]:
                ticks.update({id(tick.label1), id(tick.label2)})
            if ax.get_visible():
                drawn += tick_labels(ax, axis)
    for text in fig.findobj(Text):
        if id(text) in ticks or not text.get_visible() or not text.get_text().strip():
            continue
        if text.axes is not None and not text.axes.get_visible():
            continue
        drawn.append(text)
    return drawn


def tick_labels(ax: Axes, axis: str) -> list[Text]:
    """The drawn tick labels of one axis of ``ax`` (after a draw): visible, non-empty and at a
    tick inside the view limits."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    if not target.get_visible():
        return []
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    span = hi - lo
    found = []
    for tick in [*target.get_major_ticks(), *target.get_minor_ticks()]:
        if not lo - 1e-9 * span <= tick.get_loc() <= hi + 1e-9 * span:
            continue
        found += [t for t in (tick.label1, tick.label2)
                  if t.get_visible() and t.get_text().strip()]
    return found


def overlapping_texts(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of visible texts whose rendered boxes overlap (a pixel of slack)."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    texts = visible_texts(fig)
    boxes: list[tuple[str, Bbox]] = [(t.get_text(), t.get_window_extent(renderer).expanded(
        1.0, 1.0).shrunk(1.0, 1.0)) for t in texts]
    clashes = []
    for (ta, a), (tb, b) in combinations(boxes, 2):
        if a.width <= 0 or b.width <= 0:
            continue
        if a.x0 + 1 < b.x1 and b.x0 + 1 < a.x1 and a.y0 + 1 < b.y1 and b.y0 + 1 < a.y1:
            clashes.append((ta, tb))
    return clashes


def assert_readable(fig: Figure) -> None:
    """The figure has a title; every axis with tick labels has a label; every legend names
    distinct entries; no two texts overlap."""
    fig.canvas.draw()
    suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""  # type: ignore[attr-defined]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert suptitle or all(ax.get_title() for ax in axes), "figure without a title"
    for ax in axes:
        for axis in ("x", "y"):
            if tick_labels(ax, axis):
                label = ax.get_xlabel() if axis == "x" else ax.get_ylabel()
                assert label.strip(), f"{axis} axis of {ax.get_title()!r} has no label"
        legend = ax.get_legend()
        if legend is not None:
            names = [t.get_text() for t in legend.get_texts()]
            assert len(names) == len(set(names)), f"legend repeats an entry: {names}"
    for legend in fig.legends:
        names = [t.get_text() for t in legend.get_texts()]
        assert len(names) == len(set(names)), f"legend repeats an entry: {names}"
    clashes = overlapping_texts(fig)
    assert not clashes, f"overlapping texts: {clashes[:5]}"


def policy_lines(ax: Axes, policies: list[str]) -> list[Line2D]:
    """The lines of ``ax`` whose label names one of ``policies`` (``"x (same as y)"`` and
    ``"x, 1.0% never got there"`` count as ``x``), in drawing order."""
    return [line for line in ax.get_lines() if policy_of(line) in policies]


def policy_of(line: Line2D) -> str:
    """The policy a line's label names."""
    return str(line.get_label()).split(" (same as ")[0].split(", ")[0]


def assert_dopd_on_top(ax: Axes, policies: list[str]) -> None:
    """``dopd`` has a line on ``ax``, drawn last, with the highest z-order and the widest
    stroke of the policy lines."""
    lines = policy_lines(ax, policies)
    dopd = [line for line in lines if policy_of(line) == "dopd"]
    assert dopd, f"no dopd line among {[line.get_label() for line in lines]}"
    top = dopd[-1]
    assert lines[-1] is top, "dopd is not drawn last"
    others = [line for line in lines if line is not top]
    assert all(top.get_zorder() > line.get_zorder() for line in others)
    assert all(top.get_linewidth() > line.get_linewidth() for line in others)


def assert_lines_distinct(ax: Axes, policies: list[str]) -> None:
    """No two policy lines share both colour and marker."""
    looks = [(line.get_color(), line.get_marker()) for line in policy_lines(ax, policies)]
    assert len(looks) == len(set(looks)), f"two policies look alike: {looks}"
