"""Write an experiment's output directory: ``report.md``, ``results.json``, ``config.json`` and
the plots (see :func:`write_report`).

Table cells hold plain numbers (units in the headers, ``-`` when undefined, ``miss`` for a
percentile that lands on a request that never got there) so the Markdown can be read back by
scripts as well as by people.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dopd.bench.report import MISS, safe_name, to_jsonable, write_json
from dopd.experiments.analysis import ScenarioAnalysis, Verdict, analyse, geometric_mean
from dopd.experiments.figures import write_figures
from dopd.experiments.suite import Scenario, Suite
from dopd.experiments.suite_runner import ExperimentResult


def _num(value: float | None, fmt: str = "{:.3f}", scale: float = 1.0) -> str:
    if value is None:
        return "-"
    return MISS if math.isinf(value) else fmt.format(scale * value)


def _ms(value: float | None) -> str:
    return _num(value, "{:.1f}", 1000.0)


def _pct_change(value: float | None) -> str:
    return _num(value, "{:+.1f}", 100.0)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _cluster(s: Scenario) -> str:
    c = s.cluster
    t = c.truth
    truth = "oracle" if t.is_oracle else (f"bias {t.model_bias:+.1%}, noise {t.step_noise:.1%}"
                                          + ("" if c.online_calibration else ", no calibration"))
    return f"{c.model} on {c.gpu}, TP{c.tp} ({truth})"


def _method(result: ExperimentResult) -> list[str]:
    suite, g = result.suite, result.suite.search
    return [
        "## Method", "",
        "- Simulated with `dopd.sim` (the same control plane as the live system); latency model: "
        "roofline, `modern` preset; every policy gets the same instance budget.",
        "- Truth and belief: the router, admission control and solver predict with their own "
        "latency model, off the simulated hardware by the model bias and step noise shown per "
        "scenario (drawn, seeded, unless `--oracle`), and calibrate it online from observed "
        "step times unless `no calibration` is shown; see `benchmarks/bench_sensitivity.py` "
        "for what each policy loses from the oracle.",
        "- Load axis: at load x a scenario replays its source at `scale * x` times the source's "
        "rate over a fixed window of arrivals (a trace is time-compressed, then cut; where the "
        "compressed trace ends early the window is that much shorter, at the same rate).",
        f"- Max goodput: the highest load at which SLO attainment stays >= the scenario's target "
        f"(90%), found by bisection from the bracket [{g.lo:g}, {g.hi:g}] (grown x2) to a "
        f"relative width of {100 * g.rel_tol:g}% (at most {g.max_runs} runs, then [lo/8, lo] "
        "once if lo misses), reported as the arrival rate there: the load times the scenario's "
        "arrival rate at load 1, so rates compare exactly as loads do (the arrival span of a "
        "window cut from a trace with gaps would not grow with the load).",
        "- Comparison load: the largest max-goodput load among the baselines "
        f"({', '.join(suite.baselines)}): the load where the baselines reach 90%. Every policy "
        "is run once there.",
        "- Reference (best baseline), per metric: the highest max goodput, the lowest P90 TTFT "
        "and P90 TPOT, the highest attainment among the baselines. Changes are relative to it "
        "(-50 = half the reference).",
        "- Percentiles count every request: one that was rejected or never finished counts as "
        "infinitely late (in TTFT and E2E when it never got its first token, in TPOT and E2E "
        "when it got it but did not finish), so a P90 that lands on such a request is `miss` "
        "(null in results.json); numpy's linear interpolation, a miss as soon as it touches an "
        "infinite latency. `rejected %` sits beside them; the `served` columns are the P90s "
        "over the requests that got there. Attainment and goodput already count every "
        "unserved request as a miss.",
        "- Floors: the prefill time of the P90 prompt alone, and one batch-1 decode step at the "
        "mean context, from the latency model: no policy can go below them.",
        f"- Seed {suite.seed}; results do not depend on the worker count.", "",
    ]


def _scenarios(analyses: tuple[ScenarioAnalysis, ...]) -> list[str]:
    rows = []
    for a in analyses:
        s = a.scenario
        rows.append([
            s.name, s.title, _cluster(s), f"{s.cluster.instances} ({s.gpus})",
            f"{s.slo.ttft_s:g}", f"{1000 * s.slo.tpot_s:g}", s.slo_source,
            f"{s.duration_s:g}", f"{s.scale:g}", f"{a.load:.3f}", f"{a.rate_rps:.2f}",
            f"{100 * a.clipped_share:.1f}",
        ])
    header = ["scenario", "workload", "model / GPU", "instances (GPUs)", "TTFT SLO s",
              "TPOT SLO ms", "SLO source", "window s", "rate x at load 1", "comparison load",
              "comparison rate r/s", "clipped %"]
    sources = [f"- `{a.scenario.name}`: {a.scenario.source.describe()}"
               + (f"; prompts truncated to fit {a.scenario.max_context} tokens"
                  if a.scenario.max_context else "") for a in analyses]
    return ["## Scenarios", "", *_table(header, rows), *sources, ""]


def _verdict_cell(v: Verdict) -> str:
    return "n/a" if v.met is None else ("met" if v.met else "MISSED")


def _targets(suite: Suite, analyses: tuple[ScenarioAnalysis, ...]) -> list[str]:
    if suite.proposed is None:
        return ["## Targets", "", "No proposed policy was run, so no target is judged.", ""]
    verdicts = [v for a in analyses for v in a.verdicts]
    met = sum(1 for v in verdicts if v.met)
    judged = sum(1 for v in verdicts if v.met is not None)
    ratios = [a.row(suite.proposed).goodput_ratio or 0.0 for a in analyses]
    gm = geometric_mean(ratios)
    rows = [[v.scenario, v.target, v.value, _verdict_cell(v), v.gap or "-", v.why or "-"]
            for v in verdicts]
    return [
        f"## Targets: {suite.proposed} against the best baseline", "",
        f"{met} of {judged} targets met. Geometric mean of the max-goodput ratio over "
        f"{len(analyses)} scenarios: {_num(gm, '{:.2f}')}x.", "",
        *_table(["scenario", "target", "value", "verdict", "gap", "why"], rows),
    ]


RESULT_HEADER = ["policy", "role", "max goodput r/s", "per GPU r/s", "x best baseline",
                 "resolved at max", "attain % at load", "rejected %", "P90 TTFT s",
                 "TTFT vs ref %", "P90 TPOT ms", "TPOT vs ref %", "served P90 TTFT s",
                 "served P90 TPOT ms", "GPU-s", "switches"]


def _scenario_section(a: ScenarioAnalysis) -> list[str]:
    s, ref = a.scenario, a.reference
    rows = []
    for r in a.rows:
        rows.append([
            r.policy, r.role, f"{r.max_goodput_rps:.2f}", f"{r.max_goodput_per_gpu:.3f}",
            _num(r.goodput_ratio, "{:.2f}"), r.resolved_max, f"{100 * r.attainment:.1f}",
            f"{100 * r.rejected_share:.1f}", _num(r.ttft_p90), _pct_change(r.ttft_change),
            _ms(r.tpot_p90), _pct_change(r.tpot_change), _num(r.ttft_p90_served),
            _ms(r.tpot_p90_served), f"{r.gpu_seconds:.0f}", str(r.switches),
        ])
    name = s.name
    return [
        f"### {name}: {s.title}", "",
        f"SLO: TTFT {s.slo.ttft_s:g} s, TPOT {1000 * s.slo.tpot_s:g} ms, attainment "
        f"{100 * s.slo.attainment:g}%. Comparison load {a.load:.3f} ({a.rate_rps:.2f} req/s). "
        f"Reference: goodput {ref.goodput_rps:.2f} req/s ({ref.goodput_policy}), P90 TTFT "
        f"{_num(ref.ttft_p90)} s ({ref.ttft_policy}), P90 TPOT {_ms(ref.tpot_p90)} ms "
        f"({ref.tpot_policy}). Floors: P90-prompt prefill {a.floors.ttft_s:.3f} s "
        f"({a.floors.p90_prompt} tokens), batch-1 decode step {1000 * a.floors.tpot_s:.1f} ms.",
        "",
        *_table(RESULT_HEADER, rows),
        f"![attainment vs rate, {name}](attainment_{safe_name(name)}.png)",
        f"![TTFT and TPOT CDFs, {name}](cdf_{safe_name(name)}.png)", "",
    ]


def _ablations(suite: Suite, analyses: tuple[ScenarioAnalysis, ...]) -> list[str]:
    if not suite.ablations or suite.proposed is None:
        return []
    rows = []
    for a in analyses:
        full = a.row(suite.proposed)
        for ab in suite.ablations:
            r = a.row(ab)
            vs = r.max_goodput_rps / full.max_goodput_rps if full.max_goodput_rps > 0 else None
            rows.append([a.scenario.name, ab, f"{r.max_goodput_rps:.2f}", _num(vs, "{:.2f}"),
                         f"{100 * r.attainment:.1f}", f"{100 * r.rejected_share:.1f}",
                         _num(r.ttft_p90), _ms(r.tpot_p90), str(r.switches)])
    header = ["scenario", "ablation", "max goodput r/s", f"x {suite.proposed}",
              "attain % at load", "rejected %", "P90 TTFT s", "P90 TPOT ms", "switches"]
    return [f"## Ablations of {suite.proposed}", "", *_table(header, rows)]


def render(result: ExperimentResult, analyses: tuple[ScenarioAnalysis, ...],
           command: str) -> str:
    """The Markdown report."""
    suite = result.suite
    head = [
        f"# dopd experiment `{suite.name}`", "", " ".join(suite.description.split()), "",
        f"Command: `{command}`", "",
        f"Wall time {result.wall_s:.0f} s with {result.workers} worker(s). Policies: "
        f"{', '.join(suite.policies)}.",
    ]
    if result.skipped:
        head.append(f"Not run (no such policy registered yet): {', '.join(result.skipped)}.")
    body = [*head, "", *_method(result), *_scenarios(analyses), *_targets(suite, analyses),
            "## Results per scenario", "",
            "Max goodput from the search; the other columns at the scenario's comparison load.",
            ""]
    for a in analyses:
        body += _scenario_section(a)
    body += _ablations(suite, analyses)
    body += ["## Plots", "", "![max goodput per scenario and policy](goodput.png)", ""]
    if suite.timeline_scenario is not None:
        name = suite.timeline_scenario
        body += [f"P/D instances and load over time in `{name}` at its comparison load:", "",
                 f"![P/D counts over time, {name}](timeline_{safe_name(name)}.png)", ""]
    return "\n".join(body)


def results_document(result: ExperimentResult, analyses: tuple[ScenarioAnalysis, ...],
                     command: str) -> dict[str, Any]:
    """The ``results.json`` content (strict JSON once passed through ``to_jsonable``)."""
    suite = result.suite
    scenarios: dict[str, Any] = {}
    for a in analyses:
        name = a.scenario.name
        policies = {}
        for r in a.rows:
            search = result.searches[(name, r.policy)]
            compare = result.comparisons[(name, r.policy)]
            policies[r.policy] = {**to_jsonable(r), "probes": to_jsonable(search.probes),
                                  "search_wall_s": search.wall_s,
                                  "compare_wall_s": compare.wall_s}
        scenarios[name] = {
            "scenario": to_jsonable(a.scenario), "comparison_load": a.load,
            "comparison_rate_rps": a.rate_rps, "clipped_share": a.clipped_share,
            "reference": to_jsonable(a.reference), "floors": to_jsonable(a.floors),
            "policies": policies, "verdicts": to_jsonable(a.verdicts),
        }
    ratios = [a.row(suite.proposed).goodput_ratio or 0.0 for a in analyses] \
        if suite.proposed else []
    verdicts = [v for a in analyses for v in a.verdicts]
    return {
        "suite": suite.name, "command": command, "workers": result.workers,
        "wall_s": result.wall_s, "policies": list(suite.policies),
        "skipped_policies": list(result.skipped), "targets": to_jsonable(suite.targets),
        "summary": {
            "goodput_ratio_geomean": geometric_mean(ratios),
            "targets_met": sum(1 for v in verdicts if v.met),
            "targets_judged": sum(1 for v in verdicts if v.met is not None),
        },
        "scenarios": scenarios,
    }


def write_report(result: ExperimentResult, out: Path, command: str) -> list[Path]:
    """Analyse ``result`` and write ``report.md``, ``results.json``, ``config.json`` (the
    resolved suite) and the plots under ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    analyses = analyse(result)
    paths = write_figures(result, analyses, out)
    report = out / "report.md"
    report.write_text(render(result, analyses, command) + "\n")
    paths.append(report)
    paths.append(write_json(out / "results.json", results_document(result, analyses, command)))
    config = {"suite": to_jsonable(result.suite), "traces_dir": str(result.traces_dir),
              "workers": result.workers, "skipped_policies": list(result.skipped)}
    paths.append(write_json(out / "config.json", config))
    return paths
