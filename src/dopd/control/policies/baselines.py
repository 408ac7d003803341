"""Built-in cluster policies: ``colocated`` (vLLM-style), ``static:P:D`` and ``static:best``
(DistServe-style fixed splits). They register in :data:`dopd.control.policies.base.POLICIES` on
import."""

from __future__ import annotations

from dopd.control.policies.base import POLICIES, ClusterPolicy, HindsightSearch, PolicyContext
from dopd.errors import require
from dopd.types import Role


class Colocated(ClusterPolicy):
    """Every instance serves both phases (continuous batching with chunked prefill and a token
    budget, or prefill priority when ``ClusterConfig.prefill_priority``); least-loaded routing."""

    name = "colocated"
    router = "least-loaded"

    def initial_roles(self, instances: int) -> list[Role]:
        return [Role.MIXED] * instances


class Static(ClusterPolicy):
    """A fixed split: instances ``0..P-1`` prefill, the next ``D`` decode; ``pd-pair`` routing."""

    router = "pd-pair"

    def __init__(self, prefill: int, decode: int) -> None:
        require(prefill >= 1 and decode >= 1, "a static split needs >= 1 prefill and >= 1 decode"
                f" instance, got {prefill}:{decode}")
        self.prefill = prefill
        self.decode = decode
        self.name = f"static:{prefill}:{decode}"

    def initial_roles(self, instances: int) -> list[Role]:
        require(self.prefill + self.decode == instances,
                f"{self.name} needs {self.prefill + self.decode} instances, the cluster has "
                f"{instances}")
        return [Role.PREFILL] * self.prefill + [Role.DECODE] * self.decode


def _colocated(args: str, context: PolicyContext) -> ClusterPolicy:
    require(args.strip() == "", f"policy colocated takes no arguments, got {args!r}")
    return Colocated()


def _static(args: str, context: PolicyContext) -> ClusterPolicy | HindsightSearch:
    n = context.config.instances
    if args.strip().lower() == "best":
        require(n >= 2, f"static:best needs at least 2 instances, the cluster has {n}")
        require(context.slo is not None, "static:best needs an SLO to rank the splits")
        return HindsightSearch(
            "static:best",
            tuple(f"static:{p}:{n - p}" for p in range(1, n)),
            lambda spec: f"static:best({spec.partition(':')[2]})",
        )
    parts = args.split(":")
    require(len(parts) == 2 and all(p.strip().isdigit() for p in parts),
            f"static policy must be static:P:D or static:best, got 'static:{args}'")
    prefill, decode = int(parts[0]), int(parts[1])
    policy = Static(prefill, decode)
    require(prefill + decode == n,
            f"static:{prefill}:{decode} needs {prefill + decode} instances, the cluster has {n}")
    return policy


POLICIES.register("colocated", _colocated)
POLICIES.register("static", _static)
