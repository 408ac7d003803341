"""The run configuration of ``dopd simulate`` (and the commands that reuse it): one tree of
frozen dataclasses, :class:`RunConfig`, loaded from TOML plus CLI overrides::

    policies = ["colocated", "static:best"]   # top level: what to compare, and the seed
    seed = 0
    [workload]  ... WorkloadConfig            # trace, or synthetic arrivals + lengths
    [cluster]   ... dopd.sim.api.SimConfig    # model, GPU, TP, instances, engine settings
    [slo]       ... dopd.types.SLO            # ttft_s, tpot_s, attainment
    [goodput]   ... GoodputSearch             # max-goodput bisection settings

Precedence: dataclass defaults < TOML file < CLI overrides (dotted keys such as
``"cluster.instances"``), by :mod:`dopd.config`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dopd.config import apply_overrides, from_mapping, load_toml
from dopd.errors import require
from dopd.sim.api import SimConfig
from dopd.types import SLO
from dopd.workload.arrivals import ARRIVALS
from dopd.workload.spec import split_spec

DEFAULT_SYNTHETIC_REQUESTS = 500
"""Requests of a synthetic workload when neither ``requests`` nor ``duration_s`` is set."""


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """Where requests come from.

    ``trace`` replays a trace file (arrival times and lengths). Otherwise arrivals are synthetic:
    ``arrival`` is an arrival-process name or spec of ``dopd.workload.spec`` (``"poisson"``,
    ``"gamma:cv=3"``, ``"onoff:rate_on=40,..."``); ``rate`` (req/s) and ``cv`` (inter-arrival
    coefficient of variation) fill in the process's ``rate`` / ``cv`` parameters where the spec
    does not set them. Lengths are sampled from ``lengths`` (a trace file, lengths-only or not, or
    a length-sampler spec such as ``"lognormal:prompt_mean=1000,..."``) or, when None, from the
    built-in statistics. ``rate_scale`` multiplies the arrival rate (a trace is time-compressed);
    then ``duration_s`` / ``requests`` cut the workload. A synthetic workload with neither gets
    :data:`DEFAULT_SYNTHETIC_REQUESTS` requests.
    """

    trace: str | None = None
    lengths: str | None = None
    arrival: str = "poisson"
    rate: float = 60.0
    cv: float | None = None
    rate_scale: float = 1.0
    duration_s: float | None = None
    requests: int | None = None

    def __post_init__(self) -> None:
        require(
            self.trace is None or self.lengths is None,
            "give either a trace or a length file, not both",
        )
        kind, _params = split_spec(self.arrival)
        ARRIVALS.get(kind)  # unknown names raise DopdError listing the known ones
        require(_positive(self.rate), f"arrival rate must be > 0 req/s, got {self.rate}")
        require(self.cv is None or _positive(self.cv), f"arrival CV must be > 0, got {self.cv}")
        require(_positive(self.rate_scale), f"rate scale must be > 0, got {self.rate_scale}")
        require(
            self.duration_s is None or _positive(self.duration_s),
            f"duration must be > 0 s, got {self.duration_s}",
        )
        require(
            self.requests is None or self.requests >= 1,
            f"number of requests must be >= 1, got {self.requests}",
        )

    @property
    def synthetic(self) -> bool:
        """True when arrival times are generated rather than read from a trace."""
        return self.trace is None


@dataclass(frozen=True, slots=True)
class GoodputSearch:
    """Max-goodput bisection over the rate scale (see ``dopd.metrics.summary.max_goodput``).

    The attainment target is ``SLO.attainment``. ``lo`` is the smallest rate scale tried (the
    policy is infeasible when it misses the target there); ``hi`` is the first guess of a scale
    that misses it (doubled while it does not); ``rel_tol`` is the relative bracket width at
    which the bisection stops; ``max_runs`` bounds the simulations per policy.
    """

    enabled: bool = False
    lo: float = 0.05
    hi: float = 1.0
    rel_tol: float = 0.02
    max_runs: int = 30

    def __post_init__(self) -> None:
        require(_positive(self.lo) and _positive(self.hi), "goodput search bounds must be > 0")
        require(self.lo < self.hi, f"goodput search needs lo < hi, got {self.lo} >= {self.hi}")
        require(0 < self.rel_tol < 1, f"goodput rel_tol must be in (0, 1), got {self.rel_tol}")
        require(self.max_runs >= 2, f"goodput max_runs must be >= 2, got {self.max_runs}")


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything one ``dopd simulate`` invocation needs besides where to write results."""

    policies: tuple[str, ...] = ("colocated", "static:best")
    seed: int = 0
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    cluster: SimConfig = field(default_factory=SimConfig)
    slo: SLO = field(default_factory=lambda: SLO(ttft_s=0.5, tpot_s=0.1, attainment=0.9))
    goodput: GoodputSearch = field(default_factory=GoodputSearch)

    def __post_init__(self) -> None:
        require(len(self.policies) >= 1, "at least one policy is needed")
        require(all(p.strip() for p in self.policies), "empty policy name")
        require(
            len(set(self.policies)) == len(self.policies),
            f"a policy is given twice: {', '.join(self.policies)}",
        )
        require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")


def _positive(x: float) -> bool:
    return x > 0 and math.isfinite(x)


def load_run_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> RunConfig:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides`` (dotted keys)."""
    config = from_mapping(RunConfig, load_toml(path), where=str(path)) if path else RunConfig()
    return apply_overrides(config, overrides or {})
