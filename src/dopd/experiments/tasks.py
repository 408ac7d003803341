"""The units of work of an experiment, run in worker processes: a max-goodput search of one
policy in one scenario, and one policy's run at a scenario's comparison load.

Tasks and outcomes are plain frozen data (picklable); a task's outcome depends only on the task,
never on which process runs it or in what order, so results do not depend on the worker count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dopd.bench.goodput import MaxGoodputResult, max_goodput
from dopd.experiments.sources import offered_rate, scenario_workload
from dopd.experiments.suite import Scenario
from dopd.metrics.summary import request_latencies, summarize_result
from dopd.sim.api import SimResult
from dopd.sim.run_config import GoodputSearch
from dopd.sim.simulation import run_simulation
from dopd.types import SLO, RequestState

ProbeFn = Callable[[str], None]
"""Called with a one-line description after every simulation of a task."""

_RETRY_DIVISOR = 8.0
"""When a policy misses the target at the search's lowest load, the search is repeated once
on [lo / 8, lo]."""


@dataclass(frozen=True, slots=True)
class SearchTask:
    """Bisect the load of ``scenario`` at which ``policy`` keeps attainment >= the SLO's."""

    scenario: Scenario
    policy: str
    search: GoodputSearch
    traces_dir: str
    seed: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.scenario.name, self.policy)


@dataclass(frozen=True, slots=True)
class Misses:
    """Shares of all requests that missed the SLO, by cause: finished late on TTFT, finished
    late on TPOT (a request can miss both), or never finished (rejected, aborted, still
    running at the end)."""

    ttft: float
    tpot: float
    unfinished: float

    @staticmethod
    def of(result: SimResult, slo: SLO) -> Misses:
        lat = request_latencies(arrival_s=result.arrival_s, first_token_s=result.first_token_s,
                                finish_s=result.finish_s, output_tokens=result.output_tokens,
                                state=result.state, slo=slo)
        finished = np.asarray(result.state) == int(RequestState.FINISHED)
        n = max(len(result), 1)
        with np.errstate(invalid="ignore"):
            ttft = finished & (lat.ttft_s > slo.ttft_s)
            tpot = finished & (lat.tpot_s > slo.tpot_s)
        return Misses(float(ttft.sum() / n), float(tpot.sum() / n),
                      float((~finished).sum() / n))

    def dominant(self) -> str:
        """The largest cause, in words."""
        causes = {"TTFT": self.ttft, "TPOT": self.tpot, "unfinished": self.unfinished}
        return max(causes, key=lambda k: causes[k])

    def describe(self) -> str:
        return (f"{100 * self.ttft:.1f}% miss TTFT, {100 * self.tpot:.1f}% miss TPOT, "
                f"{100 * self.unfinished:.1f}% unfinished")


@dataclass(frozen=True, slots=True)
class Probe:
    """One simulation of a search: the load, its arrival rate (:func:`offered_rate`), the
    attainment, why requests missed, and the policy as resolved (e.g. ``static:best(5:3)``)."""

    load: float
    rate_rps: float
    attainment: float
    misses: Misses
    resolved: str


@dataclass(frozen=True)
class SearchOutcome:
    """Result of a :class:`SearchTask`.

    ``result`` is in load units (``rate_scale`` = the load found, 0.0 when infeasible);
    ``probes`` lists every simulation in run order; ``goodput_rps`` is the measured arrival
    rate of the workload at the load found (0.0 when infeasible) and ``resolved`` the policy as
    resolved there.
    """

    scenario: str
    policy: str
    result: MaxGoodputResult
    probes: tuple[Probe, ...]
    goodput_rps: float
    resolved: str
    wall_s: float

    @property
    def load(self) -> float:
        return self.result.rate_scale


@dataclass(frozen=True, slots=True)
class CompareTask:
    """Run ``policy`` once on ``scenario`` at ``load``."""

    scenario: Scenario
    policy: str
    load: float
    traces_dir: str
    seed: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.scenario.name, self.policy)


@dataclass(frozen=True)
class CompareOutcome:
    """Result of a :class:`CompareTask`: the full simulation result and the workload's measured
    arrival rate."""

    scenario: str
    policy: str
    load: float
    rate_rps: float
    result: SimResult
    wall_s: float


Task = SearchTask | CompareTask
Outcome = SearchOutcome | CompareOutcome


def run_search(task: SearchTask, on_probe: ProbeFn | None = None) -> SearchOutcome:
    """Max-goodput bisection over the load (``dopd.bench.max_goodput``); see the task docs."""
    started = time.perf_counter()
    scenario, traces = task.scenario, Path(task.traces_dir)
    slo = scenario.slo
    probes: dict[float, Probe] = {}

    def attainment(load: float) -> float:
        if load not in probes:
            workload = scenario_workload(scenario, load, traces, task.seed)
            result = run_simulation(workload, scenario.cluster, task.policy, slo, task.seed)
            value = summarize_result(result, slo).attainment
            rate = offered_rate(scenario, load, traces, task.seed)
            probes[load] = Probe(load, rate, value, Misses.of(result, slo), result.policy)
            if on_probe is not None:
                on_probe(f"{scenario.name} {task.policy}: load {load:.3g} "
                         f"({probes[load].rate_rps:.2f} req/s) attainment {100 * value:.1f}%")
        return probes[load].attainment

    s = task.search
    found = max_goodput(attainment, slo.attainment, s.lo, s.hi, s.rel_tol, s.max_runs)
    if not found.feasible:
        found = max_goodput(attainment, slo.attainment, s.lo / _RETRY_DIVISOR, s.lo, s.rel_tol,
                            s.max_runs)
    best = probes.get(found.rate_scale)
    return SearchOutcome(
        scenario=scenario.name,
        policy=task.policy,
        result=found,
        probes=tuple(probes.values()),
        goodput_rps=best.rate_rps if best is not None else 0.0,
        resolved=best.resolved if best is not None else task.policy,
        wall_s=time.perf_counter() - started,
    )


def run_compare(task: CompareTask, on_probe: ProbeFn | None = None) -> CompareOutcome:
    """One simulation of the task's policy at its load."""
    started = time.perf_counter()
    scenario = task.scenario
    traces = Path(task.traces_dir)
    workload = scenario_workload(scenario, task.load, traces, task.seed)
    result = run_simulation(workload, scenario.cluster, task.policy, scenario.slo, task.seed)
    if on_probe is not None:
        on_probe(f"{scenario.name} {task.policy}: comparison run at load {task.load:.3g}")
    return CompareOutcome(scenario.name, task.policy, task.load,
                          offered_rate(scenario, task.load, traces, task.seed), result,
                          time.perf_counter() - started)


def run_task(task: Task, on_probe: ProbeFn | None = None) -> Outcome:
    """Dispatch to :func:`run_search` or :func:`run_compare`, or to the task's own
    ``execute(on_probe)`` (the tasks of :mod:`dopd.experiments.generalize_tasks`)."""
    if isinstance(task, SearchTask):
        return run_search(task, on_probe)
    if isinstance(task, CompareTask):
        return run_compare(task, on_probe)
    return task.execute(on_probe)  # type: ignore[no-any-return]


class Reporter:
    """Receives progress: :meth:`task_done` after each task, :meth:`probe` after each
    simulation. The base class ignores both."""

    def start(self, total_tasks: int) -> None:
        """Called once, with the number of tasks (searches and comparison runs)."""

    def probe(self, line: str) -> None:
        """One simulation finished (a search step or a comparison run)."""

    def task_done(self, done: int, total: int, line: str) -> None:
        """A task finished; ``done`` of ``total`` are finished now."""


def stable_order(outcomes: Iterable[Outcome]) -> list[Outcome]:
    """Outcomes finished together, sorted by key so the reporter sees a stable order."""
    return sorted(outcomes, key=lambda o: (o.scenario, o.policy, type(o).__name__))
