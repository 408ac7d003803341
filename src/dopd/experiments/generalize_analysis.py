"""What a generalize run says: per scenario, the proposed policy's max goodput against the
strongest and the best plain baseline, its behaviour along the load curve, and a diagnosis;
over the suite, ratio distributions, win/tie/loss and the issue-11 targets.

Ratios: ``a / b`` of max goodputs; when the baseline's is 0, the ratio is 1 when both are 0 and
:data:`RATIO_CAP` otherwise; geometric means clip ratios to
``[1 / RATIO_CAP, RATIO_CAP]`` (a max goodput of 0 counts as 1 / RATIO_CAP). A tie is a ratio
within :data:`TIE` of 1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from dopd.experiments.fair import Probe
from dopd.experiments.generalize_run import CURVE, GeneralizeResult

TIE = 0.03
RATIO_CAP = 100.0
TARGETS = {"min_vs_strongest": 0.97, "geomean_vs_strongest": 1.1,
           "geomean_nonstationary": 1.25, "geomean_vs_plain": 1.5,
           "switches_per_instance_hour": 2.0}
"""Issue 11's targets for the proposed policy."""


def ratio(a: float, b: float) -> float:
    """``a / b`` with the conventions of the module doc."""
    if b > 0:
        return a / b
    return 1.0 if a <= 0 else RATIO_CAP


def geomean(values: list[float]) -> float:
    """Geometric mean of ratios clipped to [1 / RATIO_CAP, RATIO_CAP] (NaN when empty)."""
    if not values:
        return math.nan
    clipped = np.clip(np.asarray(values, dtype=np.float64), 1 / RATIO_CAP, RATIO_CAP)
    return float(np.exp(np.mean(np.log(clipped))))


def verdict(r: float) -> str:
    """``win``, ``tie`` (within :data:`TIE`) or ``loss``."""
    return "tie" if abs(r - 1) <= TIE else ("win" if r > 1 else "loss")


def per_instance_hour(p: Probe, instances: int) -> float:
    hours = instances * max(p.sim_s, 1e-9) / 3600
    return p.switches / hours


@dataclass(frozen=True)
class ScenarioAnalysis:
    """One scenario's comparison (see the module doc); ``curve`` maps each policy that ran the
    curve to its probes at :data:`CURVE` x ``curve_base``."""

    name: str
    tags: dict[str, object]
    goodput: dict[str, float]
    resolved: dict[str, str]
    light_failure: dict[str, bool]
    monotone: dict[str, bool]
    strongest: str
    best_plain: str
    vs_strongest: float
    vs_plain: float
    curve_base: float
    curve: dict[str, tuple[Probe, ...]]
    dominance: bool
    switches_ph: float
    rejected_light: float
    rejected_feasible_light: float
    diagnosis: str

    @property
    def verdict(self) -> str:
        return verdict(self.vs_strongest)

    @property
    def nonstationary(self) -> bool:
        return self.tags["shift"] in ("rate", "mix")


def _at(probes: tuple[Probe, ...], k: int) -> Probe | None:
    return probes[k] if k < len(probes) else None


def analyse_scenario(result: GeneralizeResult, index: int) -> ScenarioAnalysis:
    """The analysis of scenario ``index`` of ``result``."""
    g = result.scenarios[index]
    name, proposed = g.name, result.proposed
    contenders = result.contenders[name]
    scans = {c.name: result.scans[(name, c.name)] for c in contenders}
    goodput = {n: o.goodput_rps for n, o in scans.items()}
    resolved = {}
    for n, o in scans.items():
        at = o.probe(o.load)
        resolved[n] = at.resolved if at is not None else "-"
    strongest = result.strongest[name]
    plain = max((c.name for c in contenders if c.plain), key=lambda n: goodput[n])
    curve = {p: o.probes for (s, p), o in result.curves.items() if s == name}
    mine = curve.get(proposed, ())
    best = curve.get(strongest, ())
    target = g.scenario.slo.attainment
    dominance = all(m.attainment >= target for m, b in zip(mine, best, strict=False)
                    if b.attainment >= target)
    one = CURVE.index(1.0)
    at_one = _at(mine, one)
    light = _at(mine, 0)
    instances = g.scenario.cluster.instances
    analysis = ScenarioAnalysis(
        name=name, tags=g.tags(), goodput=goodput, resolved=resolved,
        light_failure={n: o.result.light_load_failure for n, o in scans.items()},
        monotone={n: o.result.monotone for n, o in scans.items()},
        strongest=strongest, best_plain=plain,
        vs_strongest=ratio(goodput[proposed], goodput[strongest]),
        vs_plain=ratio(goodput[proposed], goodput[plain]),
        curve_base=result.curve_base[name], curve=curve, dominance=dominance,
        switches_ph=per_instance_hour(at_one, instances) if at_one else math.nan,
        rejected_light=light.rejected_share if light else math.nan,
        rejected_feasible_light=light.rejected_feasible_share if light else math.nan,
        diagnosis="")
    return _with_diagnosis(analysis, proposed, instances)


def _with_diagnosis(a: ScenarioAnalysis, proposed: str, instances: int) -> ScenarioAnalysis:
    parts = [f"{a.strongest} won ({a.resolved[a.strongest]}, {a.goodput[a.strongest]:.2f} "
             f"req/s vs {a.goodput[proposed]:.2f})"]
    if a.light_failure[proposed]:
        parts.append(f"{proposed} misses the target even at the lowest load")
    if not a.monotone[proposed]:
        parts.append(f"{proposed}'s attainment is not monotone in load")
    mine = a.curve.get(proposed, ())
    one = _at(mine, CURVE.index(1.0))
    if one is not None:
        m = one.misses
        parts.append(f"at the strongest's max load: attainment {100 * one.attainment:.1f}%, "
                     f"rejected {100 * one.rejected_share:.1f}%, "
                     f"{per_instance_hour(one, instances):.0f} switches/instance-h; misses "
                     f"{m.describe()} (mostly {m.dominant()})")
    if a.rejected_light > 0:
        parts.append(f"at 0.25x it rejects {100 * a.rejected_light:.1f}% "
                     f"({100 * a.rejected_feasible_light:.1f}% feasible on an idle instance)")
    if not a.dominance:
        parts.append("below the target where the strongest baseline meets it")
    return dataclasses.replace(a, diagnosis="; ".join(parts))


@dataclass(frozen=True)
class Summary:
    """Suite-level figures (see :func:`summarize`)."""

    ratios_strongest: tuple[float, ...]
    ratios_plain: tuple[float, ...]
    geomean_strongest: float
    geomean_plain: float
    geomean_nonstationary: float
    nonstationary: int
    min_strongest: float
    wins: dict[str, int]
    wins_plain: dict[str, int]
    worst: tuple[str, ...]
    dominance: int
    steady_switches_max: float
    feasible_rejections: int
    targets: dict[str, bool]
    strongest_counts: dict[str, int]


def summarize(analyses: tuple[ScenarioAnalysis, ...]) -> Summary:
    """Ratio distributions, win/tie/loss, the five worst scenarios and the targets."""
    rs = [a.vs_strongest for a in analyses]
    rp = [a.vs_plain for a in analyses]
    non = [a.vs_strongest for a in analyses if a.nonstationary]
    steady = [a.switches_ph for a in analyses
              if a.tags["shift"] == "none" and a.tags["arrival"] == "poisson"
              and not math.isnan(a.switches_ph)]
    wins = {k: sum(verdict(r) == k for r in rs) for k in ("win", "tie", "loss")}
    wins_plain = {k: sum(verdict(r) == k for r in rp) for k in ("win", "tie", "loss")}
    worst = tuple(a.name for a in sorted(analyses, key=lambda a: a.vs_strongest)[:5])
    feasible = sum(1 for a in analyses if a.rejected_feasible_light > 0)
    steady_max = max(steady) if steady else 0.0
    targets = {
        "min_vs_strongest": min(rs) >= TARGETS["min_vs_strongest"],
        "geomean_vs_strongest": geomean(rs) >= TARGETS["geomean_vs_strongest"],
        "geomean_nonstationary": bool(non) and geomean(non) >= TARGETS["geomean_nonstationary"],
        "geomean_vs_plain": geomean(rp) >= TARGETS["geomean_vs_plain"],
        "dominance_along_load": all(a.dominance for a in analyses),
        "steady_switches": steady_max <= TARGETS["switches_per_instance_hour"],
        "no_feasible_rejections_at_light_load": feasible == 0,
    }
    counts: dict[str, int] = {}
    for a in analyses:
        counts[a.strongest] = counts.get(a.strongest, 0) + 1
    return Summary(tuple(rs), tuple(rp), geomean(rs), geomean(rp), geomean(non), len(non),
                   min(rs), wins, wins_plain, worst, sum(a.dominance for a in analyses),
                   steady_max, feasible, targets, counts)
