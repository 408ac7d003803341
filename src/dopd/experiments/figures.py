"""The report's PNG plots: goodput bars, attainment-vs-rate curves, P/D counts over time and
latency CDFs (the last three reuse ``dopd.bench.plots``)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from dopd.bench.plot_style import is_proposed
from dopd.bench.plots import (
    plot_attainment_vs_rate,
    plot_latency_cdfs,
    plot_timelines,
    save_figure,
)
from dopd.bench.report import safe_name
from dopd.experiments.analysis import ScenarioAnalysis
from dopd.experiments.suite_runner import ExperimentResult

ROLE_COLORS = {"baseline": "tab:gray", "competitor": "tab:blue", "proposed": "tab:red",
               "ablation": "tab:orange"}


def goodput_figure(analyses: tuple[ScenarioAnalysis, ...],
                   target_ratio: float | None = None) -> Figure:
    """Max goodput (req/s) per policy, one panel per scenario, each bar labelled with its ratio
    to the best baseline; the best baseline as a dotted line and ``target_ratio`` x it as a
    dashed one. ``dopd`` is the red, hatched bar."""
    n = len(analyses)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    height = max(len(a.rows) for a in analyses) * 0.32 + 1.4 if analyses else 3.0
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, height * rows + 0.6),
                             squeeze=False, layout="constrained")
    for ax, a in zip(axes.flat, analyses, strict=False):
        names = [r.policy for r in a.rows]
        values = [r.max_goodput_rps for r in a.rows]
        colors = [ROLE_COLORS.get(r.role, "tab:green") for r in a.rows]
        y = np.arange(len(names))
        bars = ax.barh(y, values, color=colors, edgecolor="black", linewidth=0.6)
        for bar, name in zip(bars, names, strict=True):
            if is_proposed(name):
                bar.set_hatch("//")
        best = a.reference.goodput_rps
        if best > 0:
            ax.bar_label(bars, labels=[f"{v / best:.2f}x" for v in values], fontsize="x-small",
                         padding=2)
            ax.axvline(best, color="k", linestyle=":", linewidth=1, label="best baseline")
            if target_ratio is not None:
                ax.axvline(target_ratio * best, color="tab:red", linestyle="--", linewidth=1,
                           label=f"{target_ratio:g}x target")
        ax.set_yticks(y, names, fontsize="small")
        ax.invert_yaxis()
        ax.set_title(a.scenario.name, fontsize="medium")
        ax.set_xlabel("max goodput (req/s)")
        ax.set_ylabel("policy")
        ax.margins(x=0.18)
        ax.grid(True, axis="x", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles, _ = axes.flat[0].get_legend_handles_labels()
    handles += [Patch(color=c, label=role) for role, c in ROLE_COLORS.items()
                if any(r.role == role for a in analyses for r in a.rows)]
    fig.legend(handles=handles, loc="outside lower center", fontsize="small",
               ncols=min(len(handles), 6))
    attainment = analyses[0].scenario.slo.attainment if analyses else 0.9
    fig.suptitle(f"Max goodput at {100 * attainment:g}% SLO attainment "
                 "(bar labels: ratio to the best baseline)")
    return fig


def plot_goodput_bars(analyses: tuple[ScenarioAnalysis, ...], path: Path,
                      target_ratio: float | None = None) -> Path:
    """Write :func:`goodput_figure` to ``path``."""
    return save_figure(goodput_figure(analyses, target_ratio), path)


def write_figures(result: ExperimentResult, analyses: tuple[ScenarioAnalysis, ...],
                  out: Path) -> list[Path]:
    """Every plot of the report under ``out``; returns the paths, in report order.

    ``goodput.png``; per scenario ``attainment_<name>.png`` (from the search probes) and
    ``cdf_<name>.png`` (at the comparison load); ``timeline_<name>.png`` for the suite's
    timeline scenario (ablations left out).
    """
    suite = result.suite
    paths = [plot_goodput_bars(analyses, out / "goodput.png",
                               suite.targets.goodput_ratio if suite.proposed else None)]
    for scenario in suite.scenarios:
        name = scenario.name
        probes = {p: [(pr.rate_rps, pr.attainment) for pr in result.searches[(name, p)].probes]
                  for p in suite.policies}
        paths.append(plot_attainment_vs_rate(probes, out / f"attainment_{safe_name(name)}.png",
                                             scenario.slo.attainment,
                                             title=f"{name}: SLO attainment against load"))
        runs = {p: result.comparisons[(name, p)].result for p in suite.policies}
        paths.append(plot_latency_cdfs(runs, out / f"cdf_{safe_name(name)}.png", scenario.slo))
    if suite.timeline_scenario is not None:
        name = suite.timeline_scenario
        shown = [p for p in suite.policies if p not in suite.ablations]
        runs = {p: result.comparisons[(name, p)].result for p in shown}
        paths.append(plot_timelines(runs, out / f"timeline_{safe_name(name)}.png"))
    return paths
