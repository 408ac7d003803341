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
from matplotlib.figure import Figure

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


def plot_latency_cdfs(
    results: Mapping[str, SimResult], path: str | Path, slo: SLO | None = None
) -> Path:
    """TTFT and TPOT CDFs across policies, with the SLO targets as dashed lines.

    A TTFT curve is a share of all requests and a TPOT curve a share of the requests with more
    than one output token, so requests that never got that far make a curve top out below 1.
    """
    if not results:
        raise ValueError("no results to plot")
    fig, (ax_ttft, ax_tpot) = plt.subplots(1, 2, figsize=(12, 4.2))
    for policy, res in results.items():
        cols = request_columns(res)
        multi_token = int(np.count_nonzero(cols["output_tokens"] > 1))
        for ax, key, total in ((ax_ttft, "ttft_s", len(res)), (ax_tpot, "tpot_s", multi_token)):
            x, y = ecdf(cols[key], total=total)
            ax.step(x, y, where="post", label=policy)
    for ax, name, target in (
        (ax_ttft, "TTFT (s)", slo.ttft_s if slo else None),
        (ax_tpot, "TPOT (s)", slo.tpot_s if slo else None),
    ):
        if target is not None:
            ax.axvline(target, color="k", linestyle="--", linewidth=1, label="SLO")
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("CDF")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Latency CDFs")
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
