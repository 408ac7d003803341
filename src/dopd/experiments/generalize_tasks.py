"""The units of work of ``dopd experiment generalize`` (and ``benchmarks/bench_honest_claim.py``):
one contender's max-goodput scan on one scenario, and its attainment at given loads.

Tasks and outcomes are frozen, picklable data; an outcome depends only on its task (the runner
in :mod:`dopd.experiments.suite_runner` may run them in any process and order). Both have an
``execute(on_probe)`` method, which :func:`dopd.experiments.tasks.run_task` calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dopd.bench.goodput import DEFAULT_SCAN, ScanResult, scan_max_goodput
from dopd.experiments.fair import Contender, ContenderRunner, Probe
from dopd.experiments.sources import offered_rate, scenario_workload
from dopd.experiments.suite import Scenario

ProbeFn = Callable[[str], None]

History = tuple[tuple[str, tuple[tuple[float, float], ...]], ...]
"""Per hindsight candidate, its ``(load, attainment)`` runs (for pruning in later tasks)."""


@dataclass(frozen=True, slots=True)
class ScanSettings:
    """The load scan (scales of the scenario's nominal rate) and the bisection after it."""

    scales: tuple[float, ...] = DEFAULT_SCAN
    rel_tol: float = 0.08
    max_bisect: int = 4
    stop_after: int = 2
    extend: int = 4


def _runner(scenario: Scenario, contender: Contender, seed: int,
            history: History = ()) -> ContenderRunner:
    runner = ContenderRunner(contender, scenario.cluster, scenario.slo, seed)
    runner.history = {label: dict(runs) for label, runs in history}
    return runner


def _frozen_history(runner: ContenderRunner) -> History:
    return tuple((label, tuple(sorted(runs.items())))
                 for label, runs in sorted(runner.history.items()))


def probe_at(runner: ContenderRunner, scenario: Scenario, load: float, traces: Path,
             seed: int) -> Probe:
    """``runner``'s contender on ``scenario`` at ``load``."""
    workload = scenario_workload(scenario, load, traces, seed)
    return runner.probe(workload, load, offered_rate(scenario, load, traces, seed))


@dataclass(frozen=True)
class ScanOutcome:
    """A contender's scan on a scenario: the search result (load units), every probe (by load)
    and its candidates' history."""

    scenario: str
    policy: str
    result: ScanResult
    probes: tuple[Probe, ...]
    history: History
    wall_s: float

    @property
    def load(self) -> float:
        return self.result.rate_scale

    def probe(self, load: float) -> Probe | None:
        for p in self.probes:
            if p.load == load:
                return p
        return None

    @property
    def goodput_rps(self) -> float:
        """Arrival rate at the max-goodput load (0 when the search found none)."""
        p = self.probe(self.load)
        return p.rate_rps if p is not None else 0.0


@dataclass(frozen=True)
class ScanTask:
    """Scan the load of ``scenario`` for ``contender`` (see :func:`scan_max_goodput`)."""

    scenario: Scenario
    contender: Contender
    settings: ScanSettings
    traces_dir: str
    seed: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.scenario.name, self.contender.name)

    def execute(self, on_probe: ProbeFn | None = None) -> ScanOutcome:
        started = time.perf_counter()
        runner = _runner(self.scenario, self.contender, self.seed)
        traces = Path(self.traces_dir)
        probes: dict[float, Probe] = {}

        def attainment(load: float) -> float:
            probe = probe_at(runner, self.scenario, load, traces, self.seed)
            probes[load] = probe
            if on_probe is not None:
                on_probe(f"{self.scenario.name} {self.contender.name}: load {load:.3g} "
                         f"attainment {100 * probe.attainment:.1f}% ({probe.resolved})")
            return probe.attainment

        s = self.settings
        result = scan_max_goodput(attainment, self.scenario.slo.attainment, s.scales,
                                  s.rel_tol, s.max_bisect, s.stop_after, s.extend)
        return ScanOutcome(self.scenario.name, self.contender.name, result,
                           tuple(probes[k] for k in sorted(probes)), _frozen_history(runner),
                           time.perf_counter() - started)


@dataclass(frozen=True)
class CurveOutcome:
    """A contender's probes at the loads of a :class:`CurveTask`."""

    scenario: str
    policy: str
    probes: tuple[Probe, ...]
    wall_s: float


@dataclass(frozen=True)
class CurveTask:
    """``contender`` on ``scenario`` at each of ``loads`` (ascending); ``history`` carries the
    scan's candidate history so hindsight pruning goes on where it stopped."""

    scenario: Scenario
    contender: Contender
    loads: tuple[float, ...]
    history: History
    traces_dir: str
    seed: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.scenario.name, self.contender.name)

    def execute(self, on_probe: ProbeFn | None = None) -> CurveOutcome:
        started = time.perf_counter()
        traces = Path(self.traces_dir)
        probes = []
        for load in self.loads:
            runner = _runner(self.scenario, self.contender, self.seed,
                             tuple((lbl, tuple(r for r in runs if r[0] < load))
                                   for lbl, runs in self.history))
            probes.append(probe_at(runner, self.scenario, load, traces, self.seed))
            if on_probe is not None:
                on_probe(f"{self.scenario.name} {self.contender.name}: curve load {load:.3g} "
                         f"attainment {100 * probes[-1].attainment:.1f}%")
        return CurveOutcome(self.scenario.name, self.contender.name, tuple(probes),
                            time.perf_counter() - started)
