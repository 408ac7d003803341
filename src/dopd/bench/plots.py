"""Matplotlib figures of simulation results (Agg backend: files only, no display needed).

Each function draws one figure, writes it to ``path`` (format from the suffix, PNG by default)
and returns the path. Figures are closed after saving so long runs do not accumulate memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from dopd.bench.percentiles import honest_latencies, unreached_share
from dopd.bench.report import request_columns
from dopd.sim.api import SimResult
from dopd.types import SLO


def _save(fig: Figure, path: str | Path) -> Path:
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


def plot_timelines(results: Mapping[str, SimResult], path: str | Path) -> Path:
    """P/D instance counts (left) and load (right) over simulated time, one row per policy.

    Load is the arrival rate (req/s) with the running decodes on a second axis.
    """
    if not results:
        raise ValueError("no results to plot")
    n = len(results)
    fig, axes = plt.subplots(n, 2, figsize=(12, 2.6 * n + 0.6), squeeze=False, sharex=True)
    for row, (policy, res) in enumerate(results.items()):
        tl = res.timeline
        t = np.asarray(tl.time_s, dtype=float)
        ax_n, ax_l = axes[row]
        for values, label, color in (
            (tl.prefill_instances, "prefill", "tab:blue"),
            (tl.decode_instances, "decode", "tab:orange"),
            (tl.mixed_instances, "mixed", "tab:green"),
        ):
            v = np.asarray(values, dtype=float)
            if v.size and np.any(v > 0):
                ax_n.step(t, v, where="post", label=label, color=color)
        ax_n.set_ylabel(f"{policy}\ninstances")
        alive = np.asarray(tl.prefill_instances) + np.asarray(tl.decode_instances)
        alive = alive + np.asarray(tl.mixed_instances)
        ax_n.set_ylim(0, (int(alive.max()) if alive.size else 0) + 1)
        ax_n.legend(loc="upper right", fontsize="small")
        ax_l.plot(t, np.asarray(tl.arrivals_rps, dtype=float), color="tab:gray", label="arrivals")
        ax_l.set_ylabel("arrivals (req/s)")
        ax_d = ax_l.twinx()
        ax_d.plot(t, np.asarray(tl.running_decodes, dtype=float), color="tab:red", label="decodes")
        ax_d.set_ylabel("running decodes", color="tab:red")
        ax_l.set_title(f"{policy}: {res.switches} switches", fontsize="small")
    axes[-1][0].set_xlabel("time (s)")
    axes[-1][1].set_xlabel("time (s)")
    fig.suptitle("P/D instances and load over time")
    return _save(fig, path)


def latency_curves(result: SimResult) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Per metric (``ttft``, ``tpot``, ``e2e``): the sorted finite latencies, their CDF as a
    share of the metric's honest population, and the share of it that never got there (so the
    CDF tops out at 1 minus that share)."""
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


def plot_latency_cdfs(
    results: Mapping[str, SimResult], path: str | Path, slo: SLO | None = None
) -> Path:
    """TTFT and TPOT CDFs across policies, with the SLO targets as dashed lines.

    Each curve is over the population of the honest percentiles (``dopd.bench.percentiles``):
    TTFT over all requests, TPOT over the multi-token requests that got their first token. A
    request that never got there (rejected, aborted, unfinished) has no point, so the curve tops
    out below 1; a dotted line carries that top to the right edge and the legend gives the share
    that never got there. Where a curve stays under a quantile, that percentile is a miss.
    """
    if not results:
        raise ValueError("no results to plot")
    fig, (ax_ttft, ax_tpot) = plt.subplots(1, 2, figsize=(12, 4.2))
    tops: dict[Axes, list[tuple[float | None, float, str]]] = {ax_ttft: [], ax_tpot: []}
    for policy, res in results.items():
        curves = latency_curves(res)
        for ax, (x, y, share) in ((ax_ttft, curves["ttft"]), (ax_tpot, curves["tpot"])):
            label = f"{policy} ({100 * share:.1f}% never got there)" if share > 0 else policy
            line = ax.step(x, y, where="post", label=label)[0]
            if share > 0:
                tops[ax].append((float(x[-1]) if x.size else None, 1.0 - share,
                                 line.get_color()))
    for ax, name, target in (
        (ax_ttft, "TTFT (s)", slo.ttft_s if slo else None),
        (ax_tpot, "TPOT (s)", slo.tpot_s if slo else None),
    ):
        if target is not None:
            ax.axvline(target, color="k", linestyle="--", linewidth=1, label="SLO")
        ax.set_xscale("log")
        left, right = ax.get_xlim()
        placed: list[float] = []
        for x_end, top, color in sorted(tops[ax], key=lambda t: -t[1]):
            ax.hlines(top, left if x_end is None else x_end, right, colors=color,
                      linestyles=":", linewidth=1.2)
            stacked = sum(1 for y in placed if abs(y - top) < 0.04)  # labels of close tops
            placed.append(top)
            ax.annotate(f"{100 * (1 - top):.1f}% never got there", (right, top),
                        xytext=(-3, -2 - 10 * stacked), textcoords="offset points", ha="right",
                        va="top", color=color, fontsize="small")
        ax.set_xlim(left, right)
        ax.axhline(1.0, color="tab:gray", linewidth=0.6)
        ax.set_xlabel(name)
        ax.set_ylabel("CDF (share of requests)")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    fig.suptitle("Latency CDFs over every request (a curve tops out at the share that got there)")
    return _save(fig, path)


def plot_attainment_vs_rate(
    probes: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    target: float | None = None,
    xlabel: str = "arrival rate (req/s)",
) -> Path:
    """SLO attainment against load, one line per policy, from ``(rate, attainment)`` probes
    (for example the runs of a max-goodput bisection); the target is a dashed line."""
    if not probes:
        raise ValueError("no probes to plot")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for policy, pts in probes.items():
        if not pts:
            continue
        arr = np.asarray(sorted(pts), dtype=float)
        ax.plot(arr[:, 0], 100.0 * arr[:, 1], marker="o", label=policy)
    if target is not None:
        ax.axhline(100.0 * target, color="k", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(0, 102)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)
