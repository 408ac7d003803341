"""From raw outcomes to the report's figures: per-policy rows, the best-baseline reference,
latency floors and the verdicts against the targets (pure functions, no I/O).

Reference ("best of the baselines"), per metric: the highest max goodput, the lowest P90 TTFT,
the lowest P90 TPOT and the highest attainment among the baselines at the comparison load.
Changes are relative: ``ttft_change = -0.5`` means a P90 TTFT half the reference's.

P90s are honest (``dopd.metrics.percentiles``): a rejected or unfinished request counts as
infinitely late, and a P90 that lands on one is a miss, ``math.inf`` (``null`` in JSON). A miss
ranks behind every finite value; its change against a finite reference is ``inf``, and any
change against a missed reference is None. The served-only P90s are kept as ``*_served``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dopd.control.cluster_models import build_models
from dopd.experiments.sources import clipped_share
from dopd.experiments.suite import Scenario, Suite
from dopd.experiments.suite_runner import ExperimentResult
from dopd.experiments.tasks import CompareOutcome, Misses, SearchOutcome
from dopd.metrics.summary import summarize_result


@dataclass(frozen=True, slots=True)
class PolicyRow:
    """One policy in one scenario: its max goodput (search) and its run at the comparison load.

    ``goodput_ratio`` is against the reference goodput (None when that is 0); ``resolved_max``
    and ``resolved`` name the policy as resolved at its max load and at the comparison load.
    ``ttft_p90`` / ``tpot_p90`` are honest (``math.inf`` = a miss, see the module doc),
    ``*_served`` over the requests that have the value; ``rejected_share`` is at the comparison
    load.
    """

    policy: str
    role: str
    feasible: bool
    converged: bool
    search_runs: int
    max_load: float
    max_goodput_rps: float
    max_goodput_per_gpu: float
    goodput_ratio: float | None
    resolved_max: str
    resolved: str
    attainment: float
    goodput_rps: float
    rejected_share: float
    ttft_p90: float | None
    tpot_p90: float | None
    ttft_p90_served: float | None
    tpot_p90_served: float | None
    ttft_change: float | None
    tpot_change: float | None
    gpu_seconds: float
    switches: int
    misses: Misses
    misses_above_max: Misses | None


@dataclass(frozen=True, slots=True)
class Reference:
    """The best baseline value per metric and which baseline holds it."""

    goodput_rps: float
    goodput_policy: str
    ttft_p90: float | None
    ttft_policy: str
    tpot_p90: float | None
    tpot_policy: str
    attainment: float
    attainment_policy: str


@dataclass(frozen=True, slots=True)
class Floors:
    """Latency without queueing at the comparison load's lengths: the prefill of the P90 prompt
    alone, and a batch-1 decode step at the mean context (prompt + half the output)."""

    p90_prompt: int
    ttft_s: float
    mean_context: float
    tpot_s: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """One target for the proposed policy in one scenario: the measured value, whether it is
    met (None: not measurable), by how much it is missed and why (empty when met)."""

    scenario: str
    target: str
    value: str
    met: bool | None
    gap: str
    why: str


@dataclass(frozen=True)
class ScenarioAnalysis:
    """Everything the report shows for one scenario."""

    scenario: Scenario
    load: float
    rate_rps: float
    clipped_share: float
    reference: Reference
    floors: Floors
    rows: tuple[PolicyRow, ...]
    verdicts: tuple[Verdict, ...]

    def row(self, policy: str) -> PolicyRow:
        return next(r for r in self.rows if r.policy == policy)


def role_of(suite: Suite, policy: str) -> str:
    """``baseline``, ``competitor``, ``proposed`` or ``ablation``."""
    if policy in suite.baselines:
        return "baseline"
    if policy in suite.competitors:
        return "competitor"
    return "proposed" if policy == suite.proposed else "ablation"


def _change(value: float | None, ref: float | None) -> float | None:
    if value is None or ref is None or ref <= 0 or math.isinf(ref):
        return None
    return math.inf if math.isinf(value) else value / ref - 1.0


def _best(values: dict[str, float | None], lowest: bool) -> tuple[float | None, str]:
    known = {k: v for k, v in values.items() if v is not None}
    if not known:
        return None, next(iter(values))
    pick = min(known, key=lambda k: known[k]) if lowest else max(known, key=lambda k: known[k])
    return known[pick], pick


def reference(suite: Suite, scenario: str, searches: dict[tuple[str, str], SearchOutcome],
              comparisons: dict[tuple[str, str], CompareOutcome]) -> Reference:
    """The best baseline per metric (see the module doc)."""
    slo = suite.scenario(scenario).slo
    goodput = {b: searches[(scenario, b)].goodput_rps for b in suite.baselines}
    summaries = {b: summarize_result(comparisons[(scenario, b)].result, slo)
                 for b in suite.baselines}
    g, g_by = _best(dict(goodput), lowest=False)
    t, t_by = _best({b: s.ttft_p90 for b, s in summaries.items()}, lowest=True)
    d, d_by = _best({b: s.tpot_p90 for b, s in summaries.items()}, lowest=True)
    a, a_by = _best({b: s.attainment for b, s in summaries.items()}, lowest=False)
    return Reference(g or 0.0, g_by, t, t_by, d, d_by, a or 0.0, a_by)


def floors(scenario: Scenario, outcome: CompareOutcome) -> Floors:
    """:class:`Floors` from the latency model and the lengths of the comparison run."""
    latency = build_models(scenario.cluster).latency
    prompt = np.asarray(outcome.result.prompt_tokens, dtype=np.int64)
    output = np.asarray(outcome.result.output_tokens, dtype=np.float64)
    p90 = int(np.percentile(prompt, 90))
    ttft = latency.step_time(p90, p90 * p90, 1, 0, 0)
    context = float(prompt.mean() + output.mean() / 2)
    tpot = latency.step_time(0, 0, 0, 1, round(context))
    return Floors(p90, ttft, context, tpot)


def _row(suite: Suite, scenario: Scenario, policy: str, search: SearchOutcome,
         compare: CompareOutcome, ref: Reference) -> PolicyRow:
    summary = summarize_result(compare.result, scenario.slo)
    above = [p for p in search.probes if p.load > search.load and p.attainment <
             scenario.slo.attainment]
    first_above = min(above, key=lambda p: p.load).misses if above else None
    return PolicyRow(
        policy=policy,
        role=role_of(suite, policy),
        feasible=search.result.feasible,
        converged=search.result.converged,
        search_runs=len(search.probes),
        max_load=search.load,
        max_goodput_rps=search.goodput_rps,
        max_goodput_per_gpu=search.goodput_rps / scenario.gpus,
        goodput_ratio=search.goodput_rps / ref.goodput_rps if ref.goodput_rps > 0 else None,
        resolved_max=search.resolved,
        resolved=compare.result.policy,
        attainment=summary.attainment,
        goodput_rps=summary.goodput_rps,
        rejected_share=summary.rejected_share,
        ttft_p90=summary.ttft_p90,
        tpot_p90=summary.tpot_p90,
        ttft_p90_served=summary.ttft_p90_served,
        tpot_p90_served=summary.tpot_p90_served,
        ttft_change=_change(summary.ttft_p90, ref.ttft_p90),
        tpot_change=_change(summary.tpot_p90, ref.tpot_p90),
        gpu_seconds=compare.result.gpu_seconds,
        switches=compare.result.switches,
        misses=Misses.of(compare.result, scenario.slo),
        misses_above_max=first_above,
    )


def analyse(result: ExperimentResult) -> tuple[ScenarioAnalysis, ...]:
    """One :class:`ScenarioAnalysis` per scenario, in suite order."""
    suite = result.suite
    out = []
    for scenario in suite.scenarios:
        name = scenario.name
        ref = reference(suite, name, result.searches, result.comparisons)
        first = result.comparisons[(name, suite.baselines[0])]
        rows = tuple(_row(suite, scenario, p, result.searches[(name, p)],
                          result.comparisons[(name, p)], ref) for p in suite.policies)
        fl = floors(scenario, first)
        clipped = clipped_share(scenario, result.loads[name], result.traces_dir, suite.seed)
        out.append(ScenarioAnalysis(scenario, result.loads[name], first.rate_rps, clipped, ref,
                                    fl, rows, verdicts(suite, name, rows, ref, fl)))
    return tuple(out)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def verdicts(suite: Suite, name: str, rows: tuple[PolicyRow, ...], ref: Reference,
             fl: Floors) -> tuple[Verdict, ...]:
    """The proposed policy of scenario ``name`` against the suite's targets and its
    competitors; empty when the suite ran no proposed policy."""
    if suite.proposed is None:
        return ()
    by_policy = {r.policy: r for r in rows}
    t, me = suite.targets, by_policy[suite.proposed]
    out = [_goodput_verdict(name, t.goodput_ratio, me, ref)]
    out.append(_cut_verdict(name, "P90 TTFT", t.ttft_cut, me.ttft_p90, ref.ttft_p90,
                            ref.ttft_policy, fl.ttft_s, "the unloaded prefill of the P90 "
                            f"prompt ({fl.p90_prompt} tokens)", me))
    out.append(_cut_verdict(name, "P90 TPOT", t.tpot_cut, me.tpot_p90, ref.tpot_p90,
                            ref.tpot_policy, fl.tpot_s, "a batch-1 decode step at the mean "
                            f"context ({fl.mean_context:.0f} tokens)", me))
    met = me.attainment >= t.attainment
    out.append(Verdict(
        name, f"attainment >= {_pct(t.attainment)} at the baselines' 90% load",
        _pct(me.attainment), met,
        "" if met else f"missed by {100 * (t.attainment - me.attainment):.1f} points",
        "" if met else f"at that load {me.misses.describe()}"))
    for other in suite.competitors:
        row = by_policy[other]
        ahead = me.max_goodput_rps > row.max_goodput_rps
        gap = "" if ahead else (
            f"behind by {_pct(1 - me.max_goodput_rps / row.max_goodput_rps)}"
            if row.max_goodput_rps > 0 else "both 0")
        out.append(Verdict(name, f"max goodput ahead of {other}",
                           f"{me.max_goodput_rps:.2f} vs {row.max_goodput_rps:.2f} req/s", ahead,
                           gap, "" if ahead else _goodput_why(me, suite.search.rel_tol)))
    return tuple(out)


def _goodput_why(me: PolicyRow, rel_tol: float | None = None) -> str:
    if not me.feasible:
        return "it misses the attainment target even at the lowest load tried"
    parts = []
    if me.misses_above_max is not None:
        parts.append(f"just above its max load {me.misses_above_max.describe()} "
                     f"(mostly {me.misses_above_max.dominant()})")
    if rel_tol is not None:
        parts.append(f"max loads are resolved to {_pct(rel_tol)}")
    return "; ".join(parts)


def _goodput_verdict(name: str, target: float, me: PolicyRow, ref: Reference) -> Verdict:
    label = f"max goodput >= {target:g}x best baseline ({ref.goodput_policy})"
    if me.goodput_ratio is None:
        return Verdict(name, label, "n/a", None, "the baselines have no feasible load", "")
    ratio = me.goodput_ratio
    met = ratio >= target
    gap = "" if met else f"short by {target - ratio:.2f}x ({_pct(1 - ratio / target)} of target)"
    return Verdict(name, label, f"{ratio:.2f}x ({me.max_goodput_rps:.2f} vs "
                   f"{ref.goodput_rps:.2f} req/s)", met, gap,
                   "" if met else _goodput_why(me))


def _cut_verdict(name: str, what: str, cut: float, mine: float | None, ref: float | None,
                 ref_policy: str, floor: float, floor_text: str, me: PolicyRow) -> Verdict:
    label = f"{what} -{100 * cut:.0f}% or better vs best baseline ({ref_policy})"
    if mine is None or ref is None or ref <= 0:
        return Verdict(name, label, "n/a", None, "no value to compare", "")
    unserved = (f"{100 * me.rejected_share:.1f}% rejected, "
                f"{100 * me.misses.unfinished:.1f}% not finished")
    if math.isinf(mine):
        return Verdict(name, label, f"miss (vs {_seconds(ref)})", False, "the P90 is a miss",
                       f"the P90 lands on a request that never got there ({unserved})")
    if math.isinf(ref):
        return Verdict(name, label, f"{mine:.3g} s vs miss", True, "", "")
    change = mine / ref - 1.0
    met = change <= -cut
    value = f"{100 * change:+.1f}% ({mine:.3g} vs {ref:.3g} s)"
    if met:
        return Verdict(name, label, value, True, "", "")
    needed = ref * (1.0 - cut)
    gap = f"missed by {100 * (change + cut):.1f} points"
    reasons = []
    if mine > ref:
        reasons.append(f"{what} is {mine / ref:.2f}x the baseline's; at that load "
                       f"{me.misses.describe()}")
    if needed < floor:
        reasons.append(f"a {100 * cut:.0f}% cut needs <= {needed:.3g} s, below {floor_text}, "
                       f"{floor:.3g} s: the baseline's P90 is mostly service time, not queueing")
    elif mine <= ref:
        reasons.append(f"{what} is {mine / floor:.1f}x {floor_text} ({floor:.3g} s): queueing "
                       "or batching remains")
    why = "; ".join(reasons)
    return Verdict(name, label, value, False, gap, why)


def _seconds(value: float) -> str:
    return "miss" if math.isinf(value) else f"{value:.3g} s"


def geometric_mean(values: list[float]) -> float | None:
    """Geometric mean of the positive values (None when there are none)."""
    good = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, good)) / len(good)) if good else None
