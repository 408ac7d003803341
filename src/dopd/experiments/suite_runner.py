"""Run a suite: every policy's max-goodput search, then every policy at each scenario's
comparison load, on a process pool (or as Ray tasks, :mod:`dopd.experiments.ray_pool`).

The comparison load of a scenario is the largest max-goodput load among its baselines (the load
"where the baselines reach 90%"); its runs start as soon as that scenario's baseline searches
are done. Results are keyed by (scenario, policy), so they are the same for any worker count.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dopd.control.cluster_models import build_models
from dopd.control.policies.base import HindsightSearch, PolicyContext, load_policies, make_policy
from dopd.errors import require
from dopd.experiments.sources import scenario_workload
from dopd.experiments.suite import Suite
from dopd.experiments.tasks import (
    CompareOutcome,
    CompareTask,
    Outcome,
    Reporter,
    SearchOutcome,
    SearchTask,
    Task,
    run_task,
    stable_order,
)

Key = tuple[str, str]


@dataclass(frozen=True)
class ExperimentResult:
    """Everything a suite run produced, keyed by (scenario name, policy spec).

    ``loads`` maps each scenario to its comparison load; ``skipped`` lists suite policies that
    were not run because no such policy is registered; ``wall_s`` is the whole run's time.
    """

    suite: Suite
    traces_dir: Path
    searches: dict[Key, SearchOutcome]
    comparisons: dict[Key, CompareOutcome]
    loads: dict[str, float]
    skipped: tuple[str, ...]
    workers: int
    wall_s: float


def registered(spec: str) -> bool:
    """Whether the policy family of ``spec`` (its text before the first ``:``) is registered."""
    return spec.partition(":")[0].strip() in load_policies()


def drop_unregistered(suite: Suite,
                      explicit: tuple[str, ...] = ()) -> tuple[Suite, tuple[str, ...]]:
    """``suite`` without the policies that are not registered (yet), and their names.

    A policy in ``explicit`` (asked for by name) that is not registered is an error, and so is
    an unregistered baseline.
    """
    missing = tuple(p for p in suite.policies if not registered(p))
    known = ", ".join(load_policies().names())
    bad = [p for p in missing if p in explicit or p in suite.baselines]
    require(not bad, f"policy {', '.join(bad)} is not registered (known: {known})")
    return suite.without(set(missing)), missing


def check_suite(suite: Suite, traces_dir: Path) -> None:
    """Fail fast (DopdError) before any long run: every scenario's workload builds, every policy
    builds on every scenario's cluster."""
    require(traces_dir.is_dir(), f"traces directory not found: {traces_dir}")
    for scenario in suite.scenarios:
        scenario_workload(scenario, 1.0, traces_dir, suite.seed)
        models = build_models(scenario.cluster)
        context = PolicyContext(scenario.cluster, models.latency, scenario.slo, suite.seed,
                                models.kv_blocks)
        for spec in suite.policies:
            make_policy(spec, context)


def _cost(task: SearchTask) -> int:
    """Relative cost for scheduling longest first: a hindsight search runs every candidate."""
    models = build_models(task.scenario.cluster)
    context = PolicyContext(task.scenario.cluster, models.latency, task.scenario.slo, 0,
                            models.kv_blocks)
    built = make_policy(task.policy, context)
    runs = len(built.candidates) if isinstance(built, HindsightSearch) else 1
    return runs * task.scenario.cluster.instances


def comparison_load(suite: Suite, scenario: str, searches: dict[Key, SearchOutcome]) -> float:
    """The largest max-goodput load among the baselines; the search's lowest load divided by
    8 when every baseline misses the target everywhere."""
    loads = [searches[(scenario, b)].load for b in suite.baselines]
    best = max(loads)
    return best if best > 0 else suite.search.lo / 8.0


def run_suite(suite: Suite, traces_dir: Path, workers: int = 1,
              reporter: Reporter | None = None, skipped: tuple[str, ...] = (), *,
              backend: str = "local", ray_address: str | None = None) -> ExperimentResult:
    """Run ``suite`` (see the module doc) with ``workers`` processes (1: in this process);
    ``skipped`` (policies left out, see :func:`drop_unregistered`) is recorded in the result.
    With ``backend="ray"`` every simulation job is a Ray task on the cluster at
    ``ray_address`` (None: a local Ray instance with ``workers`` CPUs); results are the same.

    Raises DopdError for bad input before anything long starts.
    """
    require(workers >= 1, f"workers must be >= 1, got {workers}")
    require(backend in ("local", "ray"), f"backend must be local or ray, got {backend!r}")
    reporter = reporter or Reporter()
    started = time.perf_counter()
    check_suite(suite, traces_dir)
    searches_todo = [SearchTask(s, p, suite.search, str(traces_dir), suite.seed)
                     for s in suite.scenarios for p in suite.policies]
    searches_todo.sort(key=lambda t: (-_cost(t), t.policy not in suite.baselines))
    total = len(searches_todo) * 2
    reporter.start(total)
    searches: dict[Key, SearchOutcome] = {}
    comparisons: dict[Key, CompareOutcome] = {}
    loads: dict[str, float] = {}
    done = 0
    with executor(workers, backend, ray_address) as pool:
        pending = {pool.submit(t) for t in searches_todo}
        while pending:
            finished, pending = pool.wait(pending, reporter)
            for outcome in finished:
                done += 1
                if isinstance(outcome, SearchOutcome):
                    searches[(outcome.scenario, outcome.policy)] = outcome
                    reporter.task_done(done, total, _search_line(outcome))
                    new = _ready_comparisons(suite, searches, loads, str(traces_dir))
                    pending |= {pool.submit(t) for t in new}
                else:
                    comparisons[(outcome.scenario, outcome.policy)] = outcome
                    reporter.task_done(done, total, _compare_line(outcome))
    order = [(s.name, p) for s in suite.scenarios for p in suite.policies]
    return ExperimentResult(
        suite=suite,
        traces_dir=traces_dir,
        searches={k: searches[k] for k in order},
        comparisons={k: comparisons[k] for k in order},
        loads={s.name: loads[s.name] for s in suite.scenarios},
        skipped=skipped,
        workers=workers,
        wall_s=time.perf_counter() - started,
    )


def _ready_comparisons(suite: Suite, searches: dict[Key, SearchOutcome],
                       loads: dict[str, float], traces_dir: str) -> list[CompareTask]:
    """Comparison tasks of the scenarios whose baselines have just all finished."""
    ready = []
    for scenario in suite.scenarios:
        if scenario.name in loads:
            continue
        if all((scenario.name, b) in searches for b in suite.baselines):
            load = comparison_load(suite, scenario.name, searches)
            loads[scenario.name] = load
            ready += [CompareTask(scenario, p, load, traces_dir, suite.seed)
                      for p in suite.policies]
    return ready


def _search_line(o: SearchOutcome) -> str:
    if not o.result.feasible:
        return f"{o.scenario} {o.policy}: misses the SLO target at every load tried " \
               f"({len(o.probes)} runs, {o.wall_s:.0f} s)"
    return (f"{o.scenario} {o.policy}: max goodput {o.goodput_rps:.2f} req/s at load "
            f"{o.load:.3g} ({len(o.probes)} runs, {o.wall_s:.0f} s)")


def _compare_line(o: CompareOutcome) -> str:
    return f"{o.scenario} {o.policy}: ran at the comparison load {o.load:.3g} " \
           f"({o.rate_rps:.2f} req/s, {o.wall_s:.0f} s)"


# --------------------------------------------------------------------------------------------
# Executors: in this process (workers=1) or a process pool whose workers send probe lines back.


class _Inline:
    """Runs the oldest pending task on each ``wait``, reporting its probes as they happen."""

    def __init__(self) -> None:
        self._seq = 0

    def submit(self, task: Task) -> tuple[int, Task]:
        self._seq += 1
        return (self._seq, task)

    def wait(self, pending: set[Any], reporter: Reporter) -> tuple[list[Outcome], set[Any]]:
        first = min(pending, key=lambda item: item[0])
        return [run_task(first[1], reporter.probe)], pending - {first}

    def close(self) -> None:
        """Nothing to release."""


_PROBES: Any = None


def _init_worker(probes: Any) -> None:
    global _PROBES
    _PROBES = probes


def _pool_task(task: Task) -> Outcome:
    return run_task(task, _PROBES.put if _PROBES is not None else None)


class _Pool:
    """A spawn-context process pool; workers put probe lines on a managed queue."""

    def __init__(self, workers: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._manager = context.Manager()
        self._probes = self._manager.Queue()
        self._pool = cf.ProcessPoolExecutor(workers, mp_context=context,
                                            initializer=_init_worker, initargs=(self._probes,))

    def submit(self, task: Task) -> cf.Future[Outcome]:
        return self._pool.submit(_pool_task, task)

    def wait(self, pending: set[Any], reporter: Reporter) -> tuple[list[Outcome], set[Any]]:
        while True:
            done, rest = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
            self._drain(reporter)
            if done:
                return stable_order(f.result() for f in done), rest

    def _drain(self, reporter: Reporter) -> None:
        while True:
            try:
                reporter.probe(self._probes.get_nowait())
            except queue.Empty:
                return

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)
        self._manager.shutdown()


@contextlib.contextmanager
def executor(workers: int, backend: str = "local",
              ray_address: str | None = None) -> Iterator[Any]:
    impl: Any
    if backend == "ray":
        from dopd.experiments.ray_pool import RayPool

        impl = RayPool(workers, ray_address)
    else:
        impl = _Inline() if workers == 1 else _Pool(workers)
    try:
        yield impl
    finally:
        impl.close()


def max_workers() -> int:
    """Worker processes this machine can run (its CPU count)."""
    return os.cpu_count() or 1
