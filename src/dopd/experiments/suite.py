"""What an experiment suite is: scenarios x policies, as frozen data.

A :class:`Scenario` fixes a workload source, the cluster (model, GPU, TP, instance budget), the
SLO and the load axis; a :class:`Suite` lists scenarios, the policies to compare and their roles
(baselines, competitors, the proposed policy, its ablations), the max-goodput search settings and
the targets the proposed policy is judged against.

Load axis: at load ``x`` a scenario simulates ``source`` at ``scale * x`` times its own rate over
a fixed window of ``duration_s`` seconds of arrivals (a trace is time-compressed and then cut, a
synthetic source is drawn at the higher rate), so every load runs for the same simulated time and
burst or mix-shift episodes keep their place in the window.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

from dopd.errors import DopdError, require
from dopd.sim.api import SimConfig
from dopd.sim.run_config import GoodputSearch
from dopd.types import SLO


@dataclass(frozen=True, slots=True)
class TraceSource:
    """Replay of a trace file with arrival times.

    ``path`` is a dataset name of :mod:`dopd.data`, an absolute path or a path relative to the
    traces directory; ``start_s`` skips the first
    seconds of the original trace before it is scaled.
    """

    path: str
    start_s: float = 0.0

    def __post_init__(self) -> None:
        require(self.path.strip() != "", "trace source needs a path")
        require(math.isfinite(self.start_s) and self.start_s >= 0,
                f"trace start must be >= 0 s, got {self.start_s}")

    def describe(self) -> str:
        start = f" from {self.start_s:g} s" if self.start_s else ""
        return f"trace {self.path}{start}"


SHIFT_MODES = ("none", "split")
"""``split``: the length table is cut at its median prompt/output ratio into a decode-heavy and a
prefill-heavy half, and the mix moves from the first to the second and back."""


@dataclass(frozen=True, slots=True)
class SyntheticSource:
    """Synthetic arrivals with sampled lengths.

    ``arrival`` is an arrival spec of ``dopd.workload.spec`` whose rate parameters (``rate``,
    ``rate_on``, ``rate_off``, ``rates``) hold the rates at scale 1; they are multiplied by the
    load's scale. ``lengths`` is a length table (a dataset name or a path as for
    :class:`TraceSource`, resampled jointly) or a length-sampler spec. ``shift`` moves the
    length mix inside the window:
    ``"none"``, ``"split"`` (see :data:`SHIFT_MODES`), or another length spec to shift to.
    ``shift_at`` gives, as fractions of the window, the start and end of the ramp to the shifted
    mix and of the ramp back.
    """

    arrival: str
    lengths: str
    shift: str = "none"
    shift_at: tuple[float, float, float, float] = (0.3, 0.4, 0.65, 0.75)

    def __post_init__(self) -> None:
        require(self.arrival.strip() != "", "synthetic source needs an arrival spec")
        require(self.lengths.strip() != "", "synthetic source needs lengths")
        require(len(self.shift_at) == 4, f"shift_at needs 4 fractions, got {self.shift_at}")
        ordered = all(a <= b for a, b in itertools.pairwise(self.shift_at))
        require(ordered and self.shift_at[0] >= 0 and self.shift_at[-1] <= 1,
                f"shift_at must be ascending fractions in [0, 1], got {self.shift_at}")
        require(self.shift.strip() != "", "empty length shift")

    def describe(self) -> str:
        shift = "" if self.shift == "none" else f", length mix shift ({self.shift})"
        return f"{self.arrival} arrivals, lengths {self.lengths}{shift}"


Source = TraceSource | SyntheticSource


@dataclass(frozen=True, slots=True)
class Scenario:
    """One workload on one cluster under one SLO (see the module doc for the load axis).

    ``max_context`` truncates prompts (keeping outputs) so prompt + output fits that many
    tokens, as a front end truncates conversation history; None keeps the lengths as they are.
    ``slo_source`` says where the SLO comes from (it is printed in the report).
    """

    name: str
    title: str
    source: Source
    cluster: SimConfig
    slo: SLO
    slo_source: str
    duration_s: float
    scale: float
    max_context: int | None = None

    def __post_init__(self) -> None:
        require(self.name.strip() != "" and "," not in self.name,
                f"scenario name must be non-empty without commas, got {self.name!r}")
        require(math.isfinite(self.duration_s) and self.duration_s > 0,
                f"scenario {self.name}: duration must be > 0 s, got {self.duration_s}")
        require(math.isfinite(self.scale) and self.scale > 0,
                f"scenario {self.name}: scale must be > 0, got {self.scale}")
        require(self.max_context is None or self.max_context >= 2,
                f"scenario {self.name}: max_context must be >= 2, got {self.max_context}")

    @property
    def gpus(self) -> int:
        return self.cluster.gpus


@dataclass(frozen=True, slots=True)
class Targets:
    """What the proposed policy should reach against the best baseline (DESIGN.md headline):
    goodput ratio, relative cuts of P90 TTFT and P90 TPOT, and attainment at the comparison
    load."""

    goodput_ratio: float = 1.5
    ttft_cut: float = 0.67
    tpot_cut: float = 0.22
    attainment: float = 0.99

    def __post_init__(self) -> None:
        require(self.goodput_ratio > 0, "goodput ratio target must be > 0")
        require(0 <= self.ttft_cut < 1 and 0 <= self.tpot_cut < 1, "cuts must be in [0, 1)")
        require(0 < self.attainment <= 1, "attainment target must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class Suite:
    """Scenarios x policies, with the roles of the policies and the search settings.

    Every policy of ``baselines``, ``competitors``, ``proposed`` and ``ablations`` is run; the
    baselines define the comparison load (the largest max-goodput load among them) and the
    reference figures. ``timeline_scenario`` names the scenario whose P/D-over-time plot goes in
    the report.
    """

    name: str
    description: str
    scenarios: tuple[Scenario, ...]
    baselines: tuple[str, ...] = ("colocated", "static:best")
    competitors: tuple[str, ...] = ("reactive", "sla-planner")
    proposed: str | None = "dopd"
    ablations: tuple[str, ...] = ("dopd:noforecast", "dopd:nolength", "dopd:novariance")
    search: GoodputSearch = field(default_factory=lambda: GoodputSearch(
        enabled=True, lo=0.5, hi=1.0, rel_tol=0.05, max_runs=12))
    targets: Targets = field(default_factory=Targets)
    seed: int = 0
    timeline_scenario: str | None = None

    def __post_init__(self) -> None:
        require(len(self.scenarios) >= 1, f"suite {self.name} has no scenario")
        names = [s.name for s in self.scenarios]
        require(len(set(names)) == len(names), f"suite {self.name}: scenario names repeat")
        require(len(self.baselines) >= 1, f"suite {self.name} needs at least one baseline")
        policies = self.policies
        require(len(set(policies)) == len(policies),
                f"suite {self.name}: a policy has two roles: {', '.join(policies)}")
        require(all(p.strip() and "," not in p for p in policies),
                f"suite {self.name}: bad policy spec in {policies}")
        require(self.timeline_scenario is None or self.timeline_scenario in names,
                f"suite {self.name}: unknown timeline scenario {self.timeline_scenario!r}")
        require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")

    @property
    def policies(self) -> tuple[str, ...]:
        """Every policy, in report order: baselines, competitors, proposed, ablations."""
        proposed = (self.proposed,) if self.proposed else ()
        return (*self.baselines, *self.competitors, *proposed, *self.ablations)

    def scenario(self, name: str) -> Scenario:
        """The scenario called ``name``; DopdError listing the known ones otherwise."""
        for s in self.scenarios:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.scenarios)
        raise DopdError(f"suite {self.name} has no scenario {name!r} (known: {known})")

    def select(self, scenarios: tuple[str, ...] | None = None,
               policies: tuple[str, ...] | None = None) -> Suite:
        """A copy restricted to the named scenarios (in the order given) and to the named
        policies plus the baselines, which every comparison needs. A named policy that is not
        in the suite (a variant such as ``dopd:drain=migrate``) is run as an extra ablation.
        DopdError for scenario names that are not in the suite."""
        suite = self
        if scenarios is not None:
            require(len(scenarios) >= 1, "no scenario selected")
            require(len(set(scenarios)) == len(scenarios), "a scenario is selected twice")
            chosen = tuple(self.scenario(n) for n in scenarios)
            timeline = self.timeline_scenario if self.timeline_scenario in scenarios else None
            suite = replace(suite, scenarios=chosen, timeline_scenario=timeline)
        if policies is not None:
            require(len(set(policies)) == len(policies), "a policy is selected twice")
            require(all(p.strip() and "," not in p for p in policies),
                    f"bad policy spec in {', '.join(policies)}")
            extra = tuple(p for p in policies if p not in self.policies)
            keep = set(policies)
            suite = replace(
                suite,
                competitors=tuple(p for p in self.competitors if p in keep),
                proposed=self.proposed if self.proposed in keep else None,
                ablations=tuple(p for p in self.ablations if p in keep) + extra,
            )
        return suite

    def without(self, dropped: set[str]) -> Suite:
        """A copy without the policies in ``dropped`` (never a baseline)."""
        require(not dropped & set(self.baselines),
                f"cannot drop a baseline: {', '.join(sorted(dropped & set(self.baselines)))}")
        return replace(
            self,
            competitors=tuple(p for p in self.competitors if p not in dropped),
            proposed=None if self.proposed in dropped else self.proposed,
            ablations=tuple(p for p in self.ablations if p not in dropped),
        )
