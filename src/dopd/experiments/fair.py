"""Fair baselines: every baseline also with dopd's router and a token budget (and, for static,
a split) chosen in hindsight, and a DistServe-style split planned without hindsight.

A :class:`Contender` is what a comparison runs at a load of a scenario:

- ``fixed``: one :class:`Variant` (a policy spec on the scenario's cluster, possibly with another
  router or token budget), e.g. plain ``colocated`` or ``dopd``;
- ``hindsight``: every candidate variant runs at the load and the best one (attainment, then
  goodput) counts, as ``static:best`` does for its splits. The max goodput of this envelope is
  the best of the candidates' max goodputs: it is what an operator who tuned the knob for this
  very workload would get. Candidates that missed the target at the two highest loads already
  run below (or by more than :data:`PRUNE_GAP` at the highest) are not run again (attainment is
  assumed not to recover at a higher load; the cost of a tuned baseline stays a few runs);
- ``planned``: DistServe's practice without hindsight: every split candidate is simulated on the
  first :attr:`Contender.plan_share` of the requests at this load (the "profiling window", at
  least :data:`PLAN_MIN` requests), the
  best split is kept and the whole workload runs with it.

:func:`baseline_contenders` lists the contenders of one scenario; "strongest baseline" is the best
of all of them (see :mod:`dopd.experiments.generalize_run`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from dopd.control.cluster_models import build_models
from dopd.errors import require
from dopd.experiments.tasks import Misses
from dopd.metrics.summary import summarize_result
from dopd.sim.api import SimConfig, SimResult
from dopd.sim.simulation import run_simulation
from dopd.types import SLO, RequestState
from dopd.workload import Workload

ROUTER = "length-aware"
"""dopd's router, which the fair baselines get too."""

COLOCATED_BUDGETS = (256, 512, 1024, 2048, 4096, 8192)
"""Token budgets (max batched tokens = chunk size) a fair colocated pool is tuned over."""

STATIC_BUDGETS = (512, 2048, 8192)
"""Token budgets a fair static split is tuned over (with its split)."""

MAX_SPLITS = 7
"""At most this many prefill counts are tried for a fair or planned split (evenly spaced when
the budget has more instances)."""

MAX_PLAIN_SPLITS = 15
"""Plain ``static:best`` tries every split up to 16 instances, and 15 evenly spaced ones above."""

PLAN_SHARE = 0.15
"""Share of the requests (the first ones) the DistServe-style planner sees."""

PLAN_MIN = 20
"""The planner sees at least this many requests (all of them in a smaller workload)."""

PRUNE_GAP = 0.2
"""A hindsight candidate that missed the target by more than this at the highest load run
below is not run again."""

KINDS = ("fixed", "hindsight", "planned")


@dataclass(frozen=True, slots=True)
class Variant:
    """A policy spec with the router and token budget it runs with (None: the scenario's)."""

    policy: str
    router: str | None = None
    budget: int | None = None

    def config(self, base: SimConfig) -> SimConfig:
        """``base`` with this variant's router and token budget."""
        changes: dict[str, object] = {}
        if self.router is not None:
            changes["router"] = self.router
        if self.budget is not None:
            changes["max_batched_tokens"] = self.budget
        return dataclasses.replace(base, **changes) if changes else base

    @property
    def label(self) -> str:
        parts = [self.policy]
        if self.router is not None:
            parts.append(self.router)
        if self.budget is not None:
            parts.append(f"{self.budget}tok")
        return "@".join(parts)


@dataclass(frozen=True, slots=True)
class Contender:
    """A policy of a comparison (see the module doc). ``plain``: a baseline as users run it
    (no hindsight, the scenario's router and budget); ``baseline``: counts for the strongest
    baseline; the proposed policy has both False."""

    name: str
    kind: str
    candidates: tuple[Variant, ...]
    baseline: bool = True
    plain: bool = False
    plan_share: float = PLAN_SHARE

    def __post_init__(self) -> None:
        require(self.kind in KINDS, f"contender kind must be one of {KINDS}, got {self.kind!r}")
        require(len(self.candidates) >= 1, f"contender {self.name} has no candidate")
        require(self.kind != "fixed" or len(self.candidates) == 1,
                f"fixed contender {self.name} needs exactly one variant")
        require(0 < self.plan_share < 1, f"plan share must be in (0, 1), got {self.plan_share}")


@dataclass(frozen=True, slots=True)
class Probe:
    """One contender at one load: attainment and what explains it, as chosen (``resolved``).

    ``rejected_feasible_share``: share of all requests that were rejected although they would
    have met the SLO on an idle instance (their prefill alone within the TTFT target); admission
    control should reject none of those at light load."""

    load: float
    rate_rps: float
    attainment: float
    goodput_rps: float
    rejected_share: float
    switches: int
    gpu_seconds: float
    sim_s: float
    misses: Misses
    resolved: str
    candidates_run: int
    rejected_feasible_share: float = 0.0

    def to_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["misses"] = dataclasses.asdict(self.misses)
        return data


def split_counts(instances: int, limit: int = MAX_SPLITS) -> tuple[int, ...]:
    """Prefill counts tried for a split of ``instances``: all of 1..n-1, or ``limit`` evenly
    spaced ones."""
    require(instances >= 2, f"a split needs >= 2 instances, got {instances}")
    if instances - 1 <= limit:
        return tuple(range(1, instances))
    points = np.linspace(1, instances - 1, limit)
    return tuple(sorted({round(float(p)) for p in points}))


def _splits(instances: int, limit: int, router: str | None,
            budgets: tuple[int | None, ...]) -> tuple[Variant, ...]:
    return tuple(Variant(f"static:{p}:{instances - p}", router, b)
                 for p in split_counts(instances, limit) for b in budgets)


def baseline_contenders(instances: int, proposed: str = "dopd") -> tuple[Contender, ...]:
    """The contenders of a scenario with ``instances`` instances: plain colocated, plain
    static:best (every split, see :data:`MAX_PLAIN_SPLITS`), their fair versions (dopd's
    router; budget, and split, chosen in hindsight), the DistServe-style planned split, and
    ``proposed`` (not a baseline)."""
    out = [Contender("colocated", "fixed", (Variant("colocated"),), plain=True)]
    if instances >= 2:
        out.append(Contender("static:best", "hindsight",
                             _splits(instances, MAX_PLAIN_SPLITS, None, (None,)), plain=True))
    out.append(Contender("colocated+fair", "hindsight",
                         tuple(Variant("colocated", ROUTER, b) for b in COLOCATED_BUDGETS)))
    if instances >= 2:
        out.append(Contender("static+fair", "hindsight",
                             _splits(instances, MAX_SPLITS, ROUTER, STATIC_BUDGETS)))
        out.append(Contender("distserve", "planned", _splits(instances, MAX_SPLITS, None, (None,))))
    out.append(Contender(proposed, "fixed", (Variant(proposed),), baseline=False))
    return tuple(out)


@dataclass
class ContenderRunner:
    """Runs one contender on workloads of one scenario, remembering each candidate's attainment
    per load for pruning (see the module doc). Not thread-safe; one per search."""

    contender: Contender
    cluster: SimConfig
    slo: SLO
    seed: int
    history: dict[str, dict[float, float]] = field(default_factory=dict)

    def probe(self, workload: Workload, load: float, rate_rps: float) -> Probe:
        """Run the contender on ``workload`` (the scenario at ``load``)."""
        kind = self.contender.kind
        if kind == "fixed":
            variant = self.contender.candidates[0]
            return self._probe(load, rate_rps, self._run(variant, workload), variant.label, 1)
        if kind == "planned":
            return self._planned(workload, load, rate_rps)
        return self._hindsight(workload, load, rate_rps)

    def _run(self, variant: Variant, workload: Workload) -> SimResult:
        return run_simulation(workload, variant.config(self.cluster), variant.policy, self.slo,
                              self.seed)

    def _probe(self, load: float, rate_rps: float, result: SimResult, resolved: str,
               runs: int) -> Probe:
        summary = summarize_result(result, self.slo)
        return Probe(load=load, rate_rps=rate_rps, attainment=summary.attainment,
                     goodput_rps=summary.goodput_rps, rejected_share=summary.rejected_share,
                     switches=result.switches, gpu_seconds=result.gpu_seconds,
                     sim_s=result.sim_end_s, misses=Misses.of(result, self.slo),
                     resolved=resolved, candidates_run=runs,
                     rejected_feasible_share=self._rejected_feasible(result))

    def _pruned(self, label: str, load: float) -> bool:
        below = sorted((s, a) for s, a in self.history.get(label, {}).items() if s < load)
        target = self.slo.attainment
        if not below:
            return False
        if below[-1][1] < target - PRUNE_GAP:
            return True
        return len(below) >= 2 and all(a < target for _, a in below[-2:])

    def _hindsight(self, workload: Workload, load: float, rate_rps: float) -> Probe:
        best: tuple[tuple[float, float], SimResult, str] | None = None
        runs = 0
        candidates = [v for v in self.contender.candidates if not self._pruned(v.label, load)]
        if not candidates:  # every candidate collapsed below: the one that did best last
            last = {v.label: max(self.history[v.label].items())[1]
                    for v in self.contender.candidates}
            candidates = [max(self.contender.candidates, key=lambda v: last[v.label])]
        for variant in candidates:
            result = self._run(variant, workload)
            runs += 1
            summary = summarize_result(result, self.slo)
            self.history.setdefault(variant.label, {})[load] = summary.attainment
            key = (summary.attainment, summary.goodput_rps)
            if best is None or key > best[0]:
                best = (key, result, variant.label)
        assert best is not None
        return self._probe(load, rate_rps, best[1], best[2], runs)

    def _planned(self, workload: Workload, load: float, rate_rps: float) -> Probe:
        count = max(PLAN_MIN, math.ceil(self.contender.plan_share * len(workload)))
        window = workload.cut(max_requests=min(count, len(workload)))
        best: tuple[tuple[float, float], Variant] | None = None
        for variant in self.contender.candidates:
            summary = summarize_result(self._run(variant, window), self.slo)
            key = (summary.attainment, summary.goodput_rps)
            if best is None or key > best[0]:
                best = (key, variant)
        assert best is not None
        chosen = best[1]
        split = chosen.policy.partition(":")[2]
        return self._probe(load, rate_rps, self._run(chosen, workload),
                           f"{self.contender.name}({split})", len(self.contender.candidates) + 1)

    def _rejected_feasible(self, result: SimResult) -> float:
        rejected = np.flatnonzero(np.asarray(result.state) == int(RequestState.REJECTED))
        if rejected.size == 0:
            return 0.0
        latency = build_models(self.cluster).latency
        budget = self.cluster.max_batched_tokens
        ok = 0
        for prompt in np.asarray(result.prompt_tokens)[rejected].tolist():
            total, done = 0.0, 0
            while done < prompt and total <= self.slo.ttft_s:
                chunk = min(budget, prompt - done)
                total += latency.step_time(chunk, chunk * (done + chunk), 1, 0, 0)
                done += chunk
            ok += total <= self.slo.ttft_s
        return ok / max(len(result), 1)
