"""Write a generalize run: ``report.md`` (tables, targets, the five worst scenarios with their
diagnosis), ``results.json`` (every scan, probe and curve point) and three PNG plots (ratio
distributions, win/tie/loss, attainment-versus-load curves) in the project's plot style."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from dopd.bench.plot_style import draw_order, is_proposed, log_seconds_axis, policy_styles
from dopd.bench.plots import save_figure
from dopd.bench.report import write_json
from dopd.experiments.generalize_analysis import (
    TARGETS,
    TIE,
    ScenarioAnalysis,
    Summary,
    analyse_scenario,
    summarize,
)
from dopd.experiments.generalize_run import CURVE, GeneralizeResult
from dopd.experiments.realism import Realism

_VERDICT_COLORS = {"win": "tab:green", "tie": "tab:gray", "loss": "tab:red"}


def _fmt_ratio(r: float) -> str:
    return "inf" if math.isinf(r) else f"{r:.2f}x"


def _markdown(result: GeneralizeResult, analyses: tuple[ScenarioAnalysis, ...], s: Summary,
              command: str) -> str:
    p = result.proposed
    lines = [f"# dopd experiment generalize: {len(analyses)} scenarios, seed {result.seed}", "",
             f"Command: `{command}`  ", f"Wall time {result.wall_s:.0f} s with "
             f"{result.workers} worker(s). Realism: {result.realism.describe()}.", "",
             "Baselines: `colocated` and `static:best` as users run them (plain); "
             "`colocated+fair` / `static+fair` with dopd's router (length-aware) and the token "
             "budget (and split) chosen in hindsight; `distserve`: a split planned on the first "
             "15 % of the requests. Strongest = best of all of them. Max goodput: scan of "
             "0.125-4x the nominal rate, bisection at the highest crossing of the attainment "
             "target; 0 when the lowest load misses it.", "",
             "## Summary", "",
             f"- {p} vs the strongest baseline: geometric mean {s.geomean_strongest:.2f}x, "
             f"min {s.min_strongest:.2f}x; win/tie/loss {s.wins['win']}/{s.wins['tie']}/"
             f"{s.wins['loss']} (tie = within {100 * TIE:.0f} %)",
             f"- {p} vs the best plain baseline: geometric mean {s.geomean_plain:.2f}x; "
             f"win/tie/loss {s.wins_plain['win']}/{s.wins_plain['tie']}/{s.wins_plain['loss']}",
             f"- non-stationary scenarios ({s.nonstationary}): geometric mean vs strongest "
             f"{s.geomean_nonstationary:.2f}x",
             f"- dominance along the load curve in {s.dominance}/{len(analyses)} scenarios; "
             f"max switches per instance-hour at a steady load {s.steady_switches_max:.1f}; "
             f"scenarios with feasible requests rejected at 0.25x: {s.feasible_rejections}",
             "- strongest baseline: " + ", ".join(f"{k} {v}" for k, v in
                                                 sorted(s.strongest_counts.items())), "",
             "| target (issue 11) | goal | met |", "|---|---|---|"]
    goals = {"min_vs_strongest": f">= {TARGETS['min_vs_strongest']}x in every scenario",
             "geomean_vs_strongest": f">= {TARGETS['geomean_vs_strongest']}x",
             "geomean_nonstationary": f">= {TARGETS['geomean_nonstationary']}x",
             "geomean_vs_plain": f">= {TARGETS['geomean_vs_plain']}x",
             "dominance_along_load": "meets 90 % wherever the strongest does",
             "steady_switches": f"<= {TARGETS['switches_per_instance_hour']:g} per instance-h",
             "no_feasible_rejections_at_light_load": "none at 0.25x"}
    lines += [f"| {k} | {goals[k]} | {'yes' if v else 'NO'} |" for k, v in s.targets.items()]
    lines += ["", "## Scenarios", "",
              f"| scenario | family / arrivals / shift | model x n | SLO regime | {p} req/s | "
              "strongest (req/s) | vs strongest | best plain (req/s) | vs plain | verdict | "
              "switches/inst-h | rejected @0.25x | GPU-s @1x (strongest) | flags |",
              "|---|---|---|---|---:|---|---:|---|---:|---|---:|---:|---|---|"]
    for a in analyses:
        t = a.tags
        flags = []
        if a.light_failure[p]:
            flags.append("light-load failure")
        if not a.monotone[p]:
            flags.append("non-monotone")
        if not a.dominance:
            flags.append("not dominant")
        lines.append(
            f"| {a.name} | {t['family']} / {t['arrival']} / {t['shift']} | {t['model']} "
            f"{t['gpu']} TP{t['tp']} x{t['instances']} | {t['regime']} (TTFT "
            f"{t['ttft_slo_s']:g} s, TPOT {1000 * float(t['tpot_slo_s']):.0f} ms) | "  # type: ignore[arg-type]
            f"{a.goodput[p]:.2f} | {a.strongest} ({a.goodput[a.strongest]:.2f}) | "
            f"{_fmt_ratio(a.vs_strongest)} | {a.best_plain} ({a.goodput[a.best_plain]:.2f}) | "
            f"{_fmt_ratio(a.vs_plain)} | {a.verdict} | {a.switches_ph:.1f} | "
            f"{100 * a.rejected_light:.1f}% | {_gpu_seconds(a, p)} | "
            f"{', '.join(flags) or '-'} |")
    lines += ["", "## Max goodput per policy",
              "", "req/s; `*` light-load failure (0 although higher loads may meet the target), "
              "`~` non-monotone attainment; every crossing of the target between scan loads "
              "follows in brackets (`v` down, `^` up, in loads of the nominal rate) where there "
              "is more than one.", ""]
    names = [c.name for c in result.contenders[analyses[0].name]]
    lines += ["| scenario | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for a in analyses:
        cells = [f"{a.goodput.get(n, math.nan):.2f}{'*' if a.light_failure.get(n) else ''}"
                 f"{'~' if not a.monotone.get(n, True) else ''}"
                 f"{_crossings(result, a.name, n)}" for n in names]
        lines.append(f"| {a.name} | " + " | ".join(cells) + " |")
    lines += ["", "## The five worst scenarios (vs the strongest baseline)", ""]
    by_name = {a.name: a for a in analyses}
    for n in s.worst:
        a = by_name[n]
        lines.append(f"- **{n}** ({_fmt_ratio(a.vs_strongest)}; {a.tags['source']}): "
                     f"{a.diagnosis}")
    lines += ["", "Plots: `ratios.png` (ratio distributions), `verdicts.png` (win/tie/loss), "
              "`curves.png` (attainment vs load, multiples of the strongest baseline's max "
              "goodput).", ""]
    return "\n".join(lines)


def _gpu_seconds(a: ScenarioAnalysis, proposed: str) -> str:
    """GPU-seconds of the proposed policy and the strongest baseline at the curve's 1x load."""
    k = CURVE.index(1.0)
    values = []
    for policy in (proposed, a.strongest):
        probes = a.curve.get(policy, ())
        values.append(f"{probes[k].gpu_seconds:.0f}" if k < len(probes) else "-")
    return f"{values[0]} ({values[1]})"


def _crossings(result: GeneralizeResult, scenario: str, policy: str) -> str:
    scan = result.scans.get((scenario, policy))
    if scan is None or len(scan.result.crossings) <= 1:
        return ""
    return " [" + " ".join(f"{'v' if c.down else '^'}{c.lo:.3g}-{c.hi:.3g}"
                           for c in scan.result.crossings) + "]"


def _ratio_figure(s: Summary, proposed: str) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, values, label in ((axes[0], s.ratios_strongest, "strongest baseline"),
                              (axes[1], s.ratios_plain, "best plain baseline")):
        v = np.clip(np.sort(np.asarray(values)), 1e-2, 1e2)
        colors = [_VERDICT_COLORS["tie" if abs(r - 1) <= TIE else "win" if r > 1 else "loss"]
                  for r in v]
        ax.bar(np.arange(v.size), v - 1.0, bottom=1.0, color=colors)  # bars from 1x
        ax.axhline(1.0, color="black", linewidth=1)
        ax.axhline(TARGETS["min_vs_strongest"], color="black", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        lo, hi = float(min(v.min(), 0.9)), float(max(v.max(), 1.1))
        ax.set_ylim(lo / 1.1, hi * 1.1)
        log_seconds_axis(ax, "y")
        ax.set_xticks([])
        ax.set_xlabel("scenarios, sorted by ratio")
        ax.set_title(f"{proposed} / {label}")
    axes[0].set_ylabel("max-goodput ratio")
    fig.tight_layout()
    return fig


def _verdict_figure(s: Summary) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 2.6))
    for row, counts in enumerate((s.wins, s.wins_plain)):
        left = 0
        for key in ("win", "tie", "loss"):
            ax.barh(row, counts[key], left=left, color=_VERDICT_COLORS[key],
                    label=key if row == 0 else None)
            left += counts[key]
    ax.set_yticks([0, 1], ["vs strongest", "vs best plain"])
    ax.set_xlabel("scenarios")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _curve_figure(analyses: tuple[ScenarioAnalysis, ...], proposed: str) -> plt.Figure:
    n = len(analyses)
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.3 * rows), squeeze=False)
    names = sorted({p for a in analyses for p in a.curve}, key=lambda p: (is_proposed(p), p))
    styles = policy_styles(names)
    for ax, a in zip(axes.flat, analyses, strict=False):
        for p in draw_order(a.curve):
            probes = a.curve[p]
            label = f"{p} (strongest)" if p == a.strongest else p
            ax.plot(CURVE[:len(probes)], [100 * x.attainment for x in probes],
                    label=label, **styles[p].kwargs())
        ax.axhline(90, color="black", linewidth=0.8, linestyle=":")
        ax.set_title(a.name, fontsize=8)
        ax.set_ylim(0, 102)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[n:]:
        ax.axis("off")
    handles = {}
    for ax in axes.flat[:n]:
        for h, lbl in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lbl.replace(" (strongest)", ""), h)
    fig.supxlabel("load / strongest baseline's max-goodput load", fontsize=9)
    fig.supylabel("SLO attainment (%)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2.3 * rows)))
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=min(len(handles), 6),
               fontsize=8, frameon=False)
    return fig


def _json(result: GeneralizeResult, analyses: tuple[ScenarioAnalysis, ...], s: Summary,
          command: str) -> dict[str, object]:
    scenarios = []
    for a in analyses:
        policies = {}
        for c in result.contenders[a.name]:
            o = result.scans[(a.name, c.name)]
            policies[c.name] = {
                "kind": c.kind, "plain": c.plain, "baseline": c.baseline,
                "candidates": [v.label for v in c.candidates],
                "max_goodput_rps": o.goodput_rps, "resolved": a.resolved[c.name],
                "search": o.result.to_dict(), "probes": [p.to_dict() for p in o.probes]}
        scenarios.append({
            "name": a.name, "tags": a.tags, "strongest": a.strongest,
            "best_plain": a.best_plain, "vs_strongest": a.vs_strongest,
            "vs_plain": a.vs_plain, "verdict": a.verdict, "dominance": a.dominance,
            "switches_per_instance_hour": a.switches_ph, "rejected_share_at_0.25x":
            a.rejected_light, "rejected_feasible_share_at_0.25x": a.rejected_feasible_light,
            "diagnosis": a.diagnosis, "curve_base_load": a.curve_base,
            "curve": {p: [dict(x.to_dict(), multiple=m) for m, x in zip(CURVE, probes,
                                                                          strict=False)]
                      for p, probes in a.curve.items()},
            "policies": policies})
    return {"command": command, "seed": result.seed, "proposed": result.proposed,
            "wall_s": result.wall_s, "workers": result.workers,
            "realism": _realism(result.realism),
            "summary": {"geomean_vs_strongest": s.geomean_strongest,
                        "geomean_vs_plain": s.geomean_plain,
                        "geomean_nonstationary": s.geomean_nonstationary,
                        "min_vs_strongest": s.min_strongest, "wins": s.wins,
                        "wins_vs_plain": s.wins_plain, "worst": list(s.worst),
                        "dominance": s.dominance, "targets": s.targets,
                        "strongest_counts": s.strongest_counts},
            "scenarios": scenarios}


def _realism(r: Realism) -> dict[str, object]:
    return {"describe": r.describe(), "oracle": r.oracle, "bias": r.bias, "noise": r.noise,
            "calibration": r.calibration}


def write_generalize_report(result: GeneralizeResult, out: Path,
                            command: str) -> tuple[list[Path], Summary]:
    """Write the report files into ``out``; returns their paths and the summary."""
    analyses = tuple(analyse_scenario(result, i) for i in range(len(result.scenarios)))
    summary = summarize(analyses)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.md"]
    paths[0].write_text(_markdown(result, analyses, summary, command))
    paths.append(write_json(out / "results.json", _json(result, analyses, summary, command)))
    paths.append(save_figure(_ratio_figure(summary, result.proposed), out / "ratios.png"))
    paths.append(save_figure(_verdict_figure(summary), out / "verdicts.png"))
    paths.append(save_figure(_curve_figure(analyses, result.proposed), out / "curves.png"))
    return paths, summary
