"""How policies look in every plot: ``dopd`` stands out and is drawn on top; every other policy
gets its own colour, marker and dash pattern, so that curves that coincide stay tellable apart.

Used by ``dopd.bench.plots`` (simulate and bench figures), ``dopd.experiments.figures`` and
``dopd.bench.verdict``; matplotlib is imported only by :func:`log_seconds_axis`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PROPOSED = "dopd"
"""The policy every figure is about."""


@dataclass(frozen=True, slots=True)
class LineStyle:
    """Matplotlib line properties of one policy (see :meth:`kwargs`)."""

    color: str
    marker: str
    linestyle: str | tuple[int, tuple[int, ...]]
    linewidth: float
    zorder: float
    markersize: float = 6.0

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Axes.plot`` / ``Axes.step``."""
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle,
                "linewidth": self.linewidth, "zorder": self.zorder,
                "markersize": self.markersize}


DOPD_STYLE = LineStyle(color="#d62728", marker="o", linestyle="-", linewidth=2.6, zorder=10.0,
                       markersize=6.5)
"""``dopd`` itself: thick solid red, above every other line."""

_COLORS = ("#1f77b4", "#7f7f7f", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#000000")
_MARKERS = ("s", "^", "D", "v", "P", "X", "<", ">", "*", "h")
_DASHES: tuple[str | tuple[int, tuple[int, ...]], ...] = (
    "--", "-.", ":", (0, (6, 2)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 3, 2, 3)),
)


def is_proposed(policy: str) -> bool:
    """True for ``dopd`` itself (not its ablations such as ``dopd:noforecast``)."""
    return policy.strip() == PROPOSED


def policy_styles(policies: Iterable[str]) -> dict[str, LineStyle]:
    """One style per policy, in the given order: :data:`DOPD_STYLE` for ``dopd``; the others
    take colours, markers and dashes in turn, so no two of them share all three."""
    styles: dict[str, LineStyle] = {}
    k = 0
    for name in policies:
        if is_proposed(name):
            styles[name] = DOPD_STYLE
            continue
        styles[name] = LineStyle(color=_COLORS[k % len(_COLORS)],
                                 marker=_MARKERS[k % len(_MARKERS)],
                                 linestyle=_DASHES[k % len(_DASHES)],
                                 linewidth=1.6, zorder=3.0 + 0.01 * k)
        k += 1
    return styles


def draw_order(policies: Iterable[str]) -> list[str]:
    """The policies with ``dopd`` moved last, so it is drawn over the others."""
    names = list(policies)
    return [p for p in names if not is_proposed(p)] + [p for p in names if is_proposed(p)]


def same_as_labels(curves: Mapping[str, Sequence[np.ndarray]]) -> dict[str, str]:
    """Legend labels that say which policies drew the same curve: ``"colocated (same as
    dopd)"`` when the arrays of ``colocated`` equal those of an earlier-listed policy (``dopd``
    always counts as listed first, since it hides the lines beneath it)."""
    order = sorted(curves, key=lambda p: 0 if is_proposed(p) else 1)
    labels: dict[str, str] = {}
    seen: list[str] = []
    for name in order:
        twin = next((s for s in seen if _same(curves[s], curves[name])), None)
        labels[name] = name if twin is None else f"{name} (same as {twin})"
        if twin is None:
            seen.append(name)
    return {name: labels[name] for name in curves}


def _same(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        np.shape(x) == np.shape(y) and np.allclose(x, y, equal_nan=True)
        for x, y in zip(a, b, strict=True))


def marker_every(n_points: int, index: int, markers: int = 8) -> tuple[int, int] | None:
    """``markevery`` for a dense curve: about ``markers`` markers, shifted by ``index`` so that
    coinciding curves put their markers at different places (None: mark every point)."""
    if n_points <= 2 * markers:
        return None
    step = max(n_points // markers, 1)
    return (int(index * step / 5) % step, step)


def log_seconds_axis(ax: Axes, axis: str = "x") -> None:
    """Plain-number ticks on a log axis (``0.05``, ``0.1``, ``2``) and unlabelled minor ticks:
    no overlapping ``2x10^-2`` labels when the data span less than a decade. Ticks at 1, 2 and
    5 of each decade, thinned to 1 and 3 over more than 2.5 decades and to powers of ten over
    more than 4. Call it after plotting: it reads the axis limits."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    decades = float(np.log10(hi / lo)) if lo > 0 and hi > lo else 1.0
    subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0, 3.0) if decades <= 4 else (1.0,)
    target.set_major_locator(LogLocator(base=10.0, subs=subs))
    target.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())
