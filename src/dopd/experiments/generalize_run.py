"""Run ``dopd experiment generalize``: every contender's max-goodput scan on every scenario, then
the attainment curve at 0.25-1.25x the strongest baseline's max-goodput load, on the process
pool (or Ray) of :mod:`dopd.experiments.suite_runner`.

The curve of a scenario runs, as soon as its baselines' scans are done, for the proposed policy,
the strongest baseline (the best max goodput of all baselines, fair ones included) and the plain
baselines. Results are keyed by (scenario, policy), so they do not depend on the worker count.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from dopd.control.cluster_models import build_models
from dopd.control.policies.base import PolicyContext, make_policy
from dopd.errors import require
from dopd.experiments.fair import Contender, baseline_contenders
from dopd.experiments.gen_space import GenScenario
from dopd.experiments.generalize_tasks import (
    CurveOutcome,
    CurveTask,
    ScanOutcome,
    ScanSettings,
    ScanTask,
)
from dopd.experiments.realism import Realism
from dopd.experiments.suite_runner import Reporter, executor

CURVE = (0.25, 0.5, 0.75, 1.0, 1.25)
"""Loads of the attainment curve, in multiples of the strongest baseline's max-goodput load."""

Key = tuple[str, str]


@dataclass(frozen=True)
class GeneralizeResult:
    """Everything a generalize run produced, keyed by (scenario name, contender name).

    ``strongest`` maps each scenario to its strongest baseline; ``curve_base`` to the load the
    curve's multiples refer to (the strongest baseline's max-goodput load, or the lowest scan
    load when every baseline fails even there).
    """

    scenarios: tuple[GenScenario, ...]
    contenders: dict[str, tuple[Contender, ...]]
    proposed: str
    seed: int
    scans: dict[Key, ScanOutcome]
    curves: dict[Key, CurveOutcome]
    strongest: dict[str, str]
    curve_base: dict[str, float]
    realism: Realism
    workers: int
    wall_s: float


def with_realism(scenarios: tuple[GenScenario, ...], realism: Realism,
                 seed: int) -> tuple[GenScenario, ...]:
    """Each scenario's cluster given its truth (drawn from ``seed`` and its position) and the
    calibration setting, as :func:`dopd.experiments.realism.apply_realism` does for suites."""
    out = []
    for index, g in enumerate(scenarios):
        cluster = dataclasses.replace(g.scenario.cluster, truth=realism.truth(seed, index),
                                      online_calibration=realism.calibration)
        out.append(dataclasses.replace(
            g, scenario=dataclasses.replace(g.scenario, cluster=cluster)))
    return tuple(out)


def check_proposed(scenarios: tuple[GenScenario, ...], proposed: str) -> None:
    """Fail fast (DopdError) before any long run: ``proposed`` (name and options) builds on
    every scenario's cluster."""
    for g in scenarios:
        scenario = g.scenario
        models = build_models(scenario.cluster)
        make_policy(proposed, PolicyContext(scenario.cluster, models.latency, scenario.slo, 0,
                                            models.kv_blocks))


def strongest_baseline(contenders: tuple[Contender, ...], scans: dict[Key, ScanOutcome],
                       scenario: str) -> str:
    """The baseline with the highest max goodput (ties: the first listed)."""
    baselines = [c.name for c in contenders if c.baseline]
    return max(baselines, key=lambda n: scans[(scenario, n)].goodput_rps)


def run_generalize(scenarios: tuple[GenScenario, ...], seed: int, traces_dir: Path,
                   workers: int = 1, reporter: Reporter | None = None, *,
                   proposed: str = "dopd", realism: Realism | None = None,
                   settings: ScanSettings | None = None, backend: str = "local",
                   ray_address: str | None = None) -> GeneralizeResult:
    """Run the comparison on ``scenarios`` (see the module doc)."""
    require(len(scenarios) >= 1, "no scenario to run")
    require(workers >= 1, f"workers must be >= 1, got {workers}")
    names = [g.name for g in scenarios]
    require(len(set(names)) == len(names), "scenario names repeat")
    realism = realism or Realism()
    settings = settings or ScanSettings()
    reporter = reporter or Reporter()
    started = time.perf_counter()
    scenarios = with_realism(scenarios, realism, seed)
    contenders = {g.name: baseline_contenders(g.scenario.cluster.instances, proposed)
                  for g in scenarios}
    by_name = {g.name: g for g in scenarios}
    todo = [ScanTask(g.scenario, c, settings, str(traces_dir), seed)
            for g in scenarios for c in contenders[g.name]]
    todo.sort(key=lambda t: -len(t.contender.candidates) * t.scenario.cluster.instances)
    curve_count = {g.name: len({proposed, *(c.name for c in contenders[g.name] if c.plain)}) + 1
                   for g in scenarios}
    total = len(todo) + sum(curve_count.values())
    reporter.start(total)
    scans: dict[Key, ScanOutcome] = {}
    curves: dict[Key, CurveOutcome] = {}
    strongest: dict[str, str] = {}
    base: dict[str, float] = {}
    done = 0
    with executor(workers, backend, ray_address) as pool:
        pending = {pool.submit(t) for t in todo}
        while pending:
            finished, pending = pool.wait(pending, reporter)
            for outcome in finished:
                done += 1
                if isinstance(outcome, ScanOutcome):
                    scans[(outcome.scenario, outcome.policy)] = outcome
                    reporter.task_done(done, total, _scan_line(outcome))
                    ready = _ready_curves(by_name, contenders, scans, strongest, base,
                                          proposed, str(traces_dir), seed)
                    for task in ready:
                        pending.add(pool.submit(task))
                    if ready:  # the strongest baseline may be a plain one: one curve less
                        total -= curve_count[ready[0].scenario.name] - len(ready)
                else:
                    curves[(outcome.scenario, outcome.policy)] = outcome
                    reporter.task_done(done, total, f"{outcome.scenario} {outcome.policy}: "
                                       f"attainment curve ({outcome.wall_s:.0f} s)")
    return GeneralizeResult(
        scenarios=scenarios, contenders=contenders, proposed=proposed, seed=seed,
        scans={(g.name, c.name): scans[(g.name, c.name)]
               for g in scenarios for c in contenders[g.name]},
        curves=dict(sorted(curves.items())), strongest=strongest, curve_base=base,
        realism=realism, workers=workers, wall_s=time.perf_counter() - started)


def _ready_curves(scenarios: dict[str, GenScenario], contenders: dict[str, tuple[Contender, ...]],
                  scans: dict[Key, ScanOutcome], strongest: dict[str, str],
                  base: dict[str, float], proposed: str, traces_dir: str,
                  seed: int) -> list[CurveTask]:
    tasks = []
    for name, g in scenarios.items():
        if name in strongest:
            continue
        if not all((name, c.name) in scans for c in contenders[name]):
            continue
        best = strongest_baseline(contenders[name], scans, name)
        strongest[name] = best
        load = scans[(name, best)].load
        base[name] = load if load > 0 else scans[(name, best)].result.scan[0]
        loads = tuple(round(k * base[name], 6) for k in CURVE)
        wanted = {proposed, best, *(c.name for c in contenders[name] if c.plain)}
        for c in contenders[name]:
            if c.name in wanted:
                tasks.append(CurveTask(g.scenario, c, loads, scans[(name, c.name)].history,
                                       traces_dir, seed))
    return tasks


def _scan_line(o: ScanOutcome) -> str:
    r = o.result
    if r.light_load_failure:
        what = f"misses the target at the lowest load {r.scan[0]:g} (max goodput 0)"
    else:
        what = f"max goodput {o.goodput_rps:.2f} req/s at load {o.load:.3g}"
    flags = "" if r.monotone else ", non-monotone"
    return f"{o.scenario} {o.policy}: {what} ({r.runs} loads{flags}, {o.wall_s:.0f} s)"
