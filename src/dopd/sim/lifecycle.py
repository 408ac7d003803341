"""Instance life cycle of the simulated cluster: policy actions, draining, role switches, cold
starts, the policy's view and the timeline samples.

States (``dopd.types.InstanceState``): a role switch goes ACTIVE -> DRAINING (routers send it
nothing new; queued prompts that have not started and hand-offs still waiting for its memory are
re-routed; everything in flight finishes, including KV it still has to send, or, for a switch
with ``migrate``, its decodes send their KV to other decode instances after the step in
progress and continue there) -> SWITCHING
(``SimConfig.role_switch_s``) -> ACTIVE in the new role. Removal drains the same way and then
STOPPED. An added instance is STARTING for ``SimConfig.cold_start_s``. An instance costs
GPU-seconds from its start (cold start included) until it stops.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from dopd.control.policies.base import (
    Action,
    AddInstance,
    ClusterView,
    InstanceView,
    RemoveInstance,
    SwitchRole,
)
from dopd.errors import DopdError, require
from dopd.sim.api import Timeline
from dopd.sim.events import Kind
from dopd.types import InstanceState, Role

if TYPE_CHECKING:
    from dopd.sim.cluster import SimCluster
    from dopd.sim.instance import SimInstance


class Lifecycle:
    """Mixin of :class:`~dopd.sim.cluster.SimCluster`: everything that changes the set of
    instances or their roles, plus the observers (view, timeline)."""

    # ------------------------------------------------------------------ set-up
    def init_instances(self: SimCluster, roles: list[Role]) -> None:
        require(1 <= len(roles) <= self.config.instances,
                f"policy {self.policy.name} starts {len(roles)} instances, the budget is "
                f"{self.config.instances}")
        for role in roles:
            require(isinstance(role, Role), f"policy {self.policy.name} gave a bad role {role!r}")
            self.new_instance(role, InstanceState.ACTIVE)
        self.refresh_targets()

    def refresh_targets(self: SimCluster) -> None:
        """Rebuild the routing candidate lists, then place work that was waiting for one."""
        self.prefill_targets = [i for i in self.instances if i.accepts_prefill]
        self.decode_targets = [i for i in self.instances if i.accepts_decode]
        while self.unrouted and self.prefill_targets:
            self.route_prefill(self.unrouted.popleft())
        while self.unplaced and self.decode_targets:
            self.route_decode(*self.unplaced.popleft())

    def alive(self: SimCluster) -> int:
        return sum(1 for i in self.instances if i.state != InstanceState.STOPPED)

    # ------------------------------------------------------------------ actions
    def apply(self: SimCluster, action: Action) -> None:
        """Carry out one policy action; DopdError if it does not apply to the cluster now."""
        now = self.q.now
        if isinstance(action, SwitchRole):
            inst = self._instance(action.instance_id)
            require(inst.state == InstanceState.ACTIVE,
                    f"cannot switch instance {inst.instance_id}: it is {inst.state.value}")
            require(action.role != inst.role,
                    f"instance {inst.instance_id} already has role {inst.role.value}")
            if action.in_place and inst.role == Role.MIXED and action.role == Role.DECODE:
                self._mixed_to_decode(inst)
            else:
                self._drain(inst, action.role, action.migrate and inst.role != Role.PREFILL)
            self.switches += 1
        elif isinstance(action, RemoveInstance):
            inst = self._instance(action.instance_id)
            require(inst.state == InstanceState.ACTIVE,
                    f"cannot remove instance {inst.instance_id}: it is {inst.state.value}")
            require(self.alive() > 1, "cannot remove the last instance")
            self._drain(inst, None)
        elif isinstance(action, AddInstance):
            require(self.alive() < self.config.instances,
                    f"cannot add an instance: {self.config.instances} are already alive")
            inst = self.new_instance(action.role, InstanceState.STARTING)
            inst.state_version += 1
            self.q.push(now + self.config.cold_start_s, Kind.STATE, inst.instance_id,
                        inst.state_version)
        else:
            raise DopdError(f"unknown policy action {action!r}")
        self.decisions.append({"t": now, "action": type(action).__name__,
                               **{k: getattr(action, k) for k in action.__slots__}})

    def _instance(self: SimCluster, index: int) -> SimInstance:
        require(0 <= index < len(self.instances), f"no instance {index}")
        return self.instances[index]

    def _drain(self: SimCluster, inst: SimInstance, target: Role | None,
               migrate: bool = False) -> None:
        inst.state = InstanceState.DRAINING
        inst.target_role = target
        inst.migrate = migrate
        self.refresh_targets()
        for rid, _, _ in inst.sched.take_unstarted():
            self.prefill_of[rid] = -1
            self.route_prefill(rid)
        handoffs = list(inst.pending)
        inst.pending = deque()
        inst.pending_tokens = 0
        for rid, source in handoffs:
            self.route_decode(rid, source)
        if inst.run is not None:
            self.poke(inst)
        if migrate and not inst.busy:
            self.migrate_decodes(inst)
        self.check_drain(inst)

    def _mixed_to_decode(self: SimCluster, inst: SimInstance) -> None:
        """A MIXED instance becomes DECODE at once: it keeps its decodes and the prompts it
        has started; the prompts it has not started go elsewhere."""
        inst.role = Role.DECODE
        inst.sched.role = Role.DECODE
        self.refresh_targets()
        for rid, _, _ in inst.sched.take_unstarted():
            self.prefill_of[rid] = -1
            self.route_prefill(rid)

    def migrate_decodes(self: SimCluster, inst: SimInstance) -> None:
        """Move the decodes running on draining ``inst`` (not busy) to other decode instances:
        their KV is held here until sent, as after a prefill; their first token stays."""
        sched = inst.sched
        for rid in sched.running_ids():
            self.migrating[rid] = sched.hold_decode(rid)
            self.migrations += 1
            self.route_decode(rid, inst.instance_id)

    def check_drain(self: SimCluster, inst: SimInstance) -> None:
        """Move a draining instance on once it holds no work."""
        if inst.state != InstanceState.DRAINING or not inst.drained:
            return
        now = self.q.now
        inst.migrate = False
        if inst.target_role is None:
            inst.state = InstanceState.STOPPED
            inst.stop_s = now
            return
        inst.state = InstanceState.SWITCHING
        inst.state_version += 1
        self.q.push(now + self.config.role_switch_s, Kind.STATE, inst.instance_id,
                    inst.state_version)

    def on_state(self: SimCluster, index: int, version: int) -> None:
        inst = self.instances[index]
        if version != inst.state_version:
            return
        if inst.state == InstanceState.SWITCHING:
            assert inst.target_role is not None
            inst.role = inst.target_role
            inst.sched.role = inst.role
            inst.target_role = None
        inst.state = InstanceState.ACTIVE
        self.refresh_targets()
        self.start(inst)

    # ------------------------------------------------------------------ observers
    def view(self: SimCluster) -> ClusterView:
        views = []
        for inst in self.instances:
            s = inst.sched
            views.append(InstanceView(
                inst.instance_id, inst.role, inst.state, inst.target_role,
                s.queued_prefill_tokens, s.num_waiting, s.num_prefilling, s.num_decoding,
                s.decode_kv_sum, len(inst.pending), s.blocks.used_blocks, s.blocks.num_blocks,
                inst.step_s, inst.steps))
        return ClusterView(self.q.now, tuple(views), self.config.instances, self.arrived,
                           self.done)

    def init_timeline(self: SimCluster) -> None:
        self.next_sample_s = 0.0
        self._samples: list[tuple[float, int, int, int, int, int]] = []

    def sample(self: SimCluster, t: float) -> float:
        """Record the state for every sample time <= ``t``; returns the next sample time."""
        counts = {Role.PREFILL: 0, Role.DECODE: 0, Role.MIXED: 0}
        queued = sum(self.prompt[i] for i in self.unrouted)
        running = 0
        for inst in self.instances:
            if inst.state == InstanceState.ACTIVE or inst.state == InstanceState.DRAINING:
                counts[inst.role] += 1
            queued += inst.sched.queued_prefill_tokens
            running += inst.sched.num_decoding
        dt = self.config.timeline_s
        s = self.next_sample_s
        k = len(self._samples)
        while s <= t:
            self._samples.append((s, counts[Role.PREFILL], counts[Role.DECODE],
                                  counts[Role.MIXED], queued, running))
            k += 1
            s = k * dt
        self.next_sample_s = s
        return s

    def timeline(self: SimCluster) -> Timeline:
        cols = np.array(self._samples, dtype=np.float64).reshape(-1, 6).T
        time_s = cols[0]
        dt = self.config.timeline_s
        arrivals = np.asarray(self.arrival_s, dtype=np.float64)
        hi = np.searchsorted(arrivals, time_s, side="left")
        lo = np.searchsorted(arrivals, time_s - dt, side="left")
        return Timeline(
            time_s=time_s,
            prefill_instances=np.asarray(cols[1], dtype=np.int64),
            decode_instances=np.asarray(cols[2], dtype=np.int64),
            mixed_instances=np.asarray(cols[3], dtype=np.int64),
            arrivals_rps=(hi - lo) / dt,
            queued_prefill_tokens=np.asarray(cols[4], dtype=np.int64),
            running_decodes=np.asarray(cols[5], dtype=np.int64),
        )

    def gpu_seconds(self: SimCluster, end_s: float) -> float:
        tp = self.config.tp
        return sum(((inst.stop_s if inst.stop_s is not None else end_s) - inst.start_s) * tp
                   for inst in self.instances)
