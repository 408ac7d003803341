"""The cluster-policy interface: what decides instance roles (and the pool size) over time.

A policy is built from a spec string (``"colocated"``, ``"static:3:5"``, ``"dopd"`` ...) by a
factory registered in :data:`POLICIES` under the spec's first ``:``-separated word; the factory
receives the rest of the spec and a :class:`PolicyContext` (run configuration, latency model,
SLO, seed). The policy then:

- names the initial roles (:meth:`ClusterPolicy.initial_roles`; fewer roles than the instance
  budget leave the rest unstarted, for elastic pools);
- gets :meth:`ClusterPolicy.on_tick` every ``ClusterConfig.tick_s`` when ``wants_ticks`` is set,
with
  a read-only :class:`ClusterView`, and answers with :data:`Action` values;
- may observe every arrival and completion (:meth:`on_arrival`, :meth:`on_request_done`), which
  is where a monitor measures demand at arrival; these hooks are only called when overridden.

Nothing here depends on the simulator's internals or on the clock's kind, so the same policy
objects can drive the live controller. A factory may instead return a :class:`HindsightSearch`:
the runner then simulates every candidate spec and keeps the best (``static:best``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dopd.control.cluster_config import ClusterConfig
from dopd.engine.chunk_table import ChunkTable
from dopd.errors import require
from dopd.perf.base import LatencyModel
from dopd.registry import Registry
from dopd.types import SLO, InstanceState, RequestOutcome, Role


@dataclass(frozen=True, slots=True)
class InstanceView:
    """Signals of one instance at the view's time (``kv_*`` in blocks of ``block_size``).

    ``recent_step_s`` is an exponentially weighted mean of its step times. While an instance is
    in the middle of a multi-step decode run, its decode context and KV use are those of the
    run's start (they are settled when the run ends).
    """

    instance_id: int
    role: Role
    state: InstanceState
    target_role: Role | None
    queued_prefill_tokens: int
    waiting: int
    prefilling: int
    decode_batch: int
    decode_ctx_sum: int
    pending_decodes: int
    kv_used_blocks: int
    kv_total_blocks: int
    recent_step_s: float
    steps: int

    @property
    def kv_use(self) -> float:
        """Share of KV blocks in use."""
        return self.kv_used_blocks / self.kv_total_blocks


@dataclass(frozen=True, slots=True)
class ClusterView:
    """Read-only snapshot of the cluster for a policy's tick.

    ``budget`` is the most instances that may be alive at once; ``arrived`` / ``finished`` count
    requests so far.
    """

    now: float
    instances: tuple[InstanceView, ...]
    budget: int
    arrived: int
    finished: int

    def alive(self) -> list[InstanceView]:
        """Instances not stopped."""
        return [v for v in self.instances if v.state != InstanceState.STOPPED]

    def count(self, role: Role, states: Sequence[InstanceState] = (InstanceState.ACTIVE,)) -> int:
        """Instances with ``role`` in one of ``states``."""
        return sum(1 for v in self.instances if v.role == role and v.state in states)


@dataclass(frozen=True, slots=True)
class SwitchRole:
    """Drain ``instance_id`` of its current role's work, then switch it to ``role`` (see
    :mod:`dopd.control.flow.instances`). With ``migrate`` the decodes in flight there move to
    other instances instead of finishing in place (the simulator sends their KV after the step
    in progress; live serving resumes them elsewhere, their KV recomputed from the prompt and
    the tokens so far). ``in_place`` (MIXED -> DECODE only) switches at once without a drain:
    prompts not started are routed elsewhere, everything else (decodes, prompts in progress)
    stays. Both drivers honour both."""

    instance_id: int
    role: Role
    reason: str = ""
    migrate: bool = False
    in_place: bool = False


@dataclass(frozen=True, slots=True)
class AddInstance:
    """Start a new instance with ``role`` (cold start); refused beyond the budget."""

    role: Role
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RemoveInstance:
    """Drain ``instance_id`` and stop it."""

    instance_id: int
    reason: str = ""


Action = SwitchRole | AddInstance | RemoveInstance


@dataclass(frozen=True)
class PolicyContext:
    """What a policy factory gets: the run's settings, latency model, SLO and seed.

    ``kv_blocks`` is each instance's KV capacity in blocks of ``config.block_size``.
    """

    config: ClusterConfig
    latency: LatencyModel
    slo: SLO | None
    seed: int
    kv_blocks: int

    def rng(self) -> np.random.Generator:
        """A fresh generator from the run's seed."""
        return np.random.default_rng(self.seed)


class ClusterPolicy:
    """Base class of cluster policies: a fixed cluster unless a subclass overrides the hooks.

    ``name`` labels results; ``router`` names the default routing policy (see
    :data:`dopd.control.routing.router.ROUTERS`); ``wants_ticks`` turns on :meth:`on_tick`, every
    ``tick_s`` seconds (None: ``ClusterConfig.tick_s``). ``mixed_prefill_tokens`` (None: no
    cap) is the per-role token budget of MIXED instances: the prompt tokens a step that also
    carries decodes may take; ``mixed_chunk_table`` (None: none) caps it by the step's decodes;
    both drivers give them to every instance's scheduler
    (:func:`dopd.control.flow.instances.scheduler_config`).
    """

    name: str = "policy"
    router: str = "least-loaded"
    wants_ticks: bool = False
    tick_s: float | None = None
    mixed_prefill_tokens: int | None = None
    mixed_chunk_table: ChunkTable | None = None

    def initial_roles(self, instances: int) -> list[Role]:
        """Roles of the instances started at time 0 (at most ``instances`` of them)."""
        return [Role.MIXED] * instances

    def on_tick(self, now: float, view: ClusterView) -> Sequence[Action]:
        """Periodic hook; returns the actions to take now."""
        return ()

    def on_arrival(self, now: float, request_id: int, prompt_tokens: int,
                   output_tokens: int) -> None:
        """Called at every arrival (only when overridden)."""

    def on_request_done(self, now: float, outcome: RequestOutcome) -> None:
        """Called when a request finishes, is rejected or aborted (only when overridden)."""


@dataclass(frozen=True)
class HindsightSearch:
    """Run every spec in ``candidates`` on the whole workload and keep the best one: highest
    SLO attainment, ties broken by goodput, then by order. ``label`` formats the winner's
    name from its spec (e.g. ``static:best(3:5)``). Needs an SLO."""

    name: str
    candidates: tuple[str, ...]
    label: Callable[[str], str]

    def __post_init__(self) -> None:
        require(len(self.candidates) >= 1, f"{self.name} has no candidate to try")


PolicyFactory = Callable[[str, PolicyContext], "ClusterPolicy | HindsightSearch"]

POLICIES: Registry[PolicyFactory] = Registry("cluster policy")
"""Factories by spec name; a factory gets the spec's arguments (text after the first ``:``).
Use :func:`load_policies` before listing it."""

POLICY_MODULES: tuple[str, ...] = (
    "dopd.control.policies.baselines",
    "dopd.control.policies.dopd_policy",
    "dopd.control.policies.reactive",
    "dopd.control.policies.sla_planner",
)
"""Modules that register their policies in :data:`POLICIES` when imported; a new policy module
is added here (as a command module is added to the CLI's ``COMMANDS``)."""


def load_policies() -> Registry[PolicyFactory]:
    """Import every module of :data:`POLICY_MODULES` (cheap after the first call); returns
    :data:`POLICIES`."""
    for name in POLICY_MODULES:
        importlib.import_module(name)
    return POLICIES


def make_policy(spec: str, context: PolicyContext) -> ClusterPolicy | HindsightSearch:
    """Build the policy named by ``spec`` (``name`` or ``name:args``); DopdError if unknown."""
    require(isinstance(spec, str) and spec.strip() != "", "policy spec is empty")
    load_policies()
    name, _, args = spec.strip().partition(":")
    return POLICIES.get(name)(args, context)
