"""Matplotlib figures of simulation results (Agg backend: files only, no display needed).

Each ``*_figure`` function builds one figure and returns it (tests inspect it); each ``plot_*``
function builds the same figure, writes it to ``path`` (format from the suffix, PNG by default)
and returns the path, closing the figure so long runs do not accumulate memory. Policies are
drawn with ``dopd.bench.plot_style``: ``dopd`` thick, red and on top, the others each with
their own colour, marker and dashes, and a legend that names coinciding curves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from dopd.bench.plot_style import (
    draw_order,
    log_seconds_axis,
    marker_every,
    policy_styles,
    same_as_labels,
)
from dopd.bench.report import request_columns
from dopd.metrics.percentiles import honest_latencies, unreached_share
from dopd.sim.api import SimResult
from dopd.types import SLO

ROLE_COLORS = {"prefill": "#1f77b4", "decode": "#ff7f0e", "mixed": "#2ca02c"}
"""Fill colours of the instance roles in the timeline."""


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (folders created), close it and return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return p


def ecdf(values: np.ndarray, total: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted finite values and their empirical CDF ``i / total``; NaN and inf are dropped.

    ``total`` defaults to the number of finite values; pass the population size to let the
    curve top out below 1 when some members have no value.
    """
    v = np.asarray(values, dtype=float)
    v = np.sort(v[np.isfinite(v)])
    denom = v.size if total is None else total
    if denom < v.size:
        raise ValueError(f"total {denom} is smaller than the {v.size} finite values")
    return v, np.arange(1, v.size + 1) / max(denom, 1)


def timelines_figure(results: Mapping[str, SimResult]) -> Figure:
    """One row per policy: instances by role, stacked (left), and the load (right): the
    arrival rate (req/s) with the running decodes on a second axis."""
    if not results:
        raise ValueError("no results to plot")
    n = len(results)
    fig, axes = plt.subplots(n, 2, figsize=(12, 2.5 * n + 0.8), squeeze=False, sharex=True,
                             layout="constrained")
    most = max(_alive(res).max(initial=0) for res in results.values())
    for row, (policy, res) in enumerate(results.items()):
        tl = res.timeline
        t = np.asarray(tl.time_s, dtype=float)
        ax_n, ax_l = axes[row]
        bottom = np.zeros(t.size)
        for role, values in (("prefill", tl.prefill_instances), ("decode", tl.decode_instances),
                             ("mixed", tl.mixed_instances)):
            v = np.asarray(values, dtype=float)
            if v.size and np.any(v > 0):
                ax_n.fill_between(t, bottom, bottom + v, step="post", color=ROLE_COLORS[role],
                                  alpha=0.75, linewidth=0, label=role)
                bottom = bottom + v
        ax_n.set_ylim(0, most + 0.5)
        ax_n.set_ylabel("instances")
        switches = f"{res.switches} switch" + ("" if res.switches == 1 else "es")
        ax_n.set_title(f"{policy}: instances by role ({switches})",
                       fontsize="medium")
        ax_n.yaxis.get_major_locator().set_params(integer=True)
        ax_n.grid(True, axis="y", alpha=0.3)
        ax_n.legend(loc="lower right", fontsize="small", ncols=3, framealpha=0.9)
        line_a = ax_l.plot(t, np.asarray(tl.arrivals_rps, dtype=float), color="#7f7f7f",
                           linewidth=1.6, label="arrivals (req/s, left)")
        ax_l.set_ylabel("arrivals (req/s)")
        ax_l.set_ylim(bottom=0)
        ax_d = ax_l.twinx()
        line_d = ax_d.plot(t, np.asarray(tl.running_decodes, dtype=float), color="#9467bd",
                           linestyle="--", linewidth=1.6, label="running decodes (right)")
        ax_d.set_ylabel("running decodes")
        ax_d.set_ylim(bottom=0)
        ax_l.set_title(f"{policy}: load", fontsize="medium")
        ax_l.grid(True, alpha=0.3)
        lines = line_a + line_d
        ax_l.legend(lines, [str(line.get_label()) for line in lines], loc="best",
                    fontsize="small", framealpha=0.9)
    axes[-1][0].set_xlabel("simulated time (s)")
    axes[-1][1].set_xlabel("simulated time (s)")
    fig.suptitle("P/D instances and load over time")
    return fig


def _alive(res: SimResult) -> np.ndarray:
    tl = res.timeline
    return (np.asarray(tl.prefill_instances) + np.asarray(tl.decode_instances)
            + np.asarray(tl.mixed_instances))


def plot_timelines(results: Mapping[str, SimResult], path: str | Path) -> Path:
    """Write :func:`timelines_figure` to ``path``."""
    return save_figure(timelines_figure(results), path)


def latency_curves(result: SimResult) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Per metric (``ttft``, ``tpot``, ``e2e``): the sorted finite latencies (seconds), their CDF
    as a share of the metric's honest population, and the share of it that never got there (so
    the CDF tops out at 1 minus that share)."""
    cols = request_columns(result)
    honest = honest_latencies(cols["ttft_s"], cols["tpot_s"], cols["e2e_s"],
                              cols["first_token_s"], cols["output_tokens"],
                              np.asarray(result.state))
    out = {}
    for name, values in (("ttft", honest.ttft_s), ("tpot", honest.tpot_s),
                         ("e2e", honest.e2e_s)):
        x, y = ecdf(values, total=int(np.count_nonzero(~np.isnan(values))))
        out[name] = (x, y, unreached_share(values))
    return out


def latency_cdfs_figure(results: Mapping[str, SimResult], slo: SLO | None = None) -> Figure:
    """TTFT (s) and TPOT (ms) CDFs across policies, log scale, SLO targets as dashed lines.

    Each curve is over the population of the honest percentiles (``dopd.metrics.percentiles``):
    TTFT over all requests, TPOT over the multi-token requests that got their first token. A
    request that never got there (rejected, aborted, unfinished) has no point, so the curve tops
    out below 1; a dotted line carries that top to the right edge and the legend gives the share
    that never got there. Where a curve stays under a quantile, that percentile is a miss.
    """
    if not results:
        raise ValueError("no results to plot")
    fig, (ax_ttft, ax_tpot) = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    curves: dict[str, list[np.ndarray]] = {}
    shares: dict[str, tuple[float, float]] = {}
    for policy, res in results.items():
        honest = latency_curves(res)
        x1, y1, s1 = honest["ttft"]
        x2, y2, s2 = honest["tpot"]
        curves[policy] = [x1, y1, 1000.0 * x2, y2]
        shares[policy] = (s1, s2)
    styles = policy_styles(results)
    labels = same_as_labels(curves)
    tops: dict[plt.Axes, list[tuple[float, float, dict[str, Any]]]] = {ax_ttft: [], ax_tpot: []}
    for index, policy in enumerate(draw_order(results)):
        x1, y1, x2, y2 = curves[policy]
        for ax, x, y, share in ((ax_ttft, x1, y1, shares[policy][0]),
                                (ax_tpot, x2, y2, shares[policy][1])):
            if x.size == 0:
                continue
            label = labels[policy]
            if share > 0:
                label = f"{label}, {100 * share:.1f}% never got there"
                tops[ax].append((float(x[-1]), float(y[-1]), styles[policy].kwargs()))
            ax.step(x, y, where="post", label=label,
                    markevery=marker_every(x.size, index), **styles[policy].kwargs())
    for ax, name, unit, target in (
        (ax_ttft, "TTFT", "s", slo.ttft_s if slo else None),
        (ax_tpot, "TPOT", "ms", 1000.0 * slo.tpot_s if slo else None),
    ):
        if target is not None:
            ax.axvline(target, color="k", linestyle="--", linewidth=1,
                       label=f"SLO {target:g} {unit}")
        ax.set_xscale("log")
        log_seconds_axis(ax, "x")
        left, right = ax.get_xlim()
        for x_end, top, style in tops[ax]:
            ax.hlines(top, x_end, right, colors=style.get("color"), linestyles=":",
                      linewidth=1.2)
        ax.set_xlim(left, right)
        ax.set_xlabel(f"{name} ({unit}), log scale")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        _legend_in_order(ax, results)
    ax_ttft.set_ylabel("share of all requests")
    ax_tpot.set_ylabel("share of served requests with > 1 output token")
    ax_ttft.set_title("time to first token")
    ax_tpot.set_title("time per output token")
    fig.suptitle("Latency CDFs over every request (a curve ending below 1: requests rejected "
                 "or never served)")
    return fig


def _legend_in_order(ax: plt.Axes, policies: Sequence[str] | Mapping[str, object]) -> None:
    """Legend with the policies in their given order (``dopd`` was drawn last), then the rest."""
    handles, labels = ax.get_legend_handles_labels()
    names = list(policies)

    def rank(label: str) -> int:
        base = label.split(" (same as ")[0].split(", ")[0]
        return names.index(base) if base in names else len(names)

    pairs = sorted(zip(handles, labels, strict=True), key=lambda hl: rank(hl[1]))
    if pairs:
        ax.legend([h for h, _ in pairs], [lab for _, lab in pairs], fontsize="small",
                  framealpha=0.9)


def plot_latency_cdfs(
    results: Mapping[str, SimResult], path: str | Path, slo: SLO | None = None
) -> Path:
    """Write :func:`latency_cdfs_figure` to ``path``."""
    return save_figure(latency_cdfs_figure(results, slo), path)


def attainment_figure(
    probes: Mapping[str, Sequence[tuple[float, float]]],
    target: float | None = None,
    xlabel: str = "arrival rate (req/s)",
    title: str = "SLO attainment against load",
) -> Figure:
    """SLO attainment (%) against load, one line per policy, from ``(rate, attainment)``
    probes (for example the runs of a max-goodput bisection); the target is a dashed line."""
    if not probes:
        raise ValueError("no probes to plot")
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    curves = {p: [np.asarray(sorted(pts), dtype=float).reshape(-1, 2)[:, i] for i in (0, 1)]
              for p, pts in probes.items() if pts}
    styles = policy_styles(curves)
    labels = same_as_labels(curves)
    for policy in draw_order(curves):
        x, y = curves[policy]
        ax.plot(x, 100.0 * y, label=labels[policy], **styles[policy].kwargs())
    if target is not None:
        ax.axhline(100.0 * target, color="k", linestyle="--", linewidth=1,
                   label=f"target {100 * target:g}%")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(0, 102)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _legend_in_order(ax, curves)
    return fig


def plot_attainment_vs_rate(
    probes: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    target: float | None = None,
    xlabel: str = "arrival rate (req/s)",
    title: str = "SLO attainment against load",
) -> Path:
    """Write :func:`attainment_figure` to ``path``."""
    return save_figure(attainment_figure(probes, target, xlabel, title), path)
