"""Instance life cycle of the simulated cluster: carrying out policy actions on the simulated
clock (drains, in-place and migrating switches, cold starts, removals).

What applies how is decided by the shared machine (:mod:`dopd.control.flow.instances`); this
object carries it out with simulated time: a drain ends when the instance holds no work, then
the switch takes ``SimConfig.role_switch_s`` (a STATE event); an added instance is STARTING for
``SimConfig.cold_start_s``. A drain moves the instance's unstarted prompts and the hand-offs
still waiting for its memory elsewhere (:data:`~dopd.control.flow.instances.REROUTE_UNSTARTED`);
with ``migrate`` its decodes send their KV to other decode instances after the step in
progress. Work is moved through the cluster's request flow (:class:`FlowHost`). An instance
costs GPU-seconds from its start (cold start included) until it stops.
"""

from __future__ import annotations

from typing import Protocol

from dopd.control.flow import instances as life
from dopd.control.flow.instances import REROUTE_UNSTARTED, Plan, Step
from dopd.control.policies.base import Action
from dopd.engine import SchedulerConfig
from dopd.errors import require
from dopd.sim.api import SimConfig
from dopd.sim.events import EventQueue, Kind
from dopd.sim.instance import SimInstance
from dopd.types import InstanceState, Role


class FlowHost(Protocol):
    """The request flow the life cycle moves work through (the simulated cluster)."""

    def refresh_targets(self) -> None:
        """Rebuild the placement candidates after a change of state or role."""

    def reroute_prompt(self, rid: int) -> None:
        """Place request ``rid``, taken off a draining instance before its prefill, again."""

    def route_decode(self, rid: int, source: int) -> None:
        """Hand ``rid`` (KV held on ``source``) to a decode instance."""

    def start(self, inst: SimInstance) -> None:
        """Start ``inst``'s next work if it is idle."""

    def poke(self, inst: SimInstance) -> None:
        """Cut ``inst``'s decode run after the step in progress (new work, or a drain)."""


class SimLifecycle:
    """The simulated instances and their life cycle (see the module docstring). ``instances``
    is indexed by instance id; ``decisions`` records every action applied."""

    def __init__(self, config: SimConfig, sched_config: SchedulerConfig, kv_blocks: int,
                 q: EventQueue, host: FlowHost) -> None:
        self.config = config
        self.sched_config = sched_config
        self.kv_blocks = kv_blocks
        self.q = q
        self.host = host
        self.instances: list[SimInstance] = []
        self.switches = 0
        self.migrations = 0
        self.migrating: dict[int, int] = {}  # request -> output tokens sampled before moving
        self.decisions: list[dict[str, object]] = []

    # ------------------------------------------------------------------ set-up
    def new_instance(self, role: Role, state: InstanceState) -> SimInstance:
        inst = SimInstance(len(self.instances), role, state, self.q.now, self.sched_config,
                           self.kv_blocks, self.config.block_size)
        self.instances.append(inst)
        return inst

    def init_instances(self, roles: list[Role], policy_name: str) -> None:
        require(1 <= len(roles) <= self.config.instances,
                f"policy {policy_name} starts {len(roles)} instances, the budget is "
                f"{self.config.instances}")
        for role in roles:
            require(isinstance(role, Role), f"policy {policy_name} gave a bad role {role!r}")
            self.new_instance(role, InstanceState.ACTIVE)
        self.host.refresh_targets()

    # ------------------------------------------------------------------ actions
    def apply(self, action: Action) -> None:
        """Carry out one policy action; DopdError (:class:`~dopd.control.flow.instances.Refused`)
        if it does not apply to the cluster now."""
        now = self.q.now
        plan = life.plan_action(action, self.instances, self.config.instances)
        if plan.step == Step.ADD:
            assert plan.role is not None
            inst = self.new_instance(plan.role, InstanceState.STARTING)
            self._after(inst, self.config.cold_start_s)
        else:
            assert plan.instance_id is not None
            inst = self.instances[plan.instance_id]
            if not plan.stops:
                self.switches += 1
            if plan.step == Step.IN_PLACE:
                self._in_place(inst, plan)
            else:
                self._drain(inst, plan)
        self.decisions.append({"t": now, "action": type(action).__name__,
                               **{k: getattr(action, k) for k in action.__slots__}})

    def _after(self, inst: SimInstance, seconds: float) -> None:
        inst.state_version += 1
        self.q.push(self.q.now + seconds, Kind.STATE, inst.instance_id, inst.state_version)

    def _move_unstarted(self, inst: SimInstance) -> None:
        if not REROUTE_UNSTARTED:
            return
        for rid, _, _ in inst.sched.take_unstarted():
            self.host.reroute_prompt(rid)

    def _drain(self, inst: SimInstance, plan: Plan) -> None:
        life.begin(inst, plan)
        inst.migrate = plan.migrate
        host = self.host
        host.refresh_targets()
        self._move_unstarted(inst)
        for rid, source in inst.pending.take_all():
            host.route_decode(rid, source)
        if inst.run is not None:
            host.poke(inst)
        if plan.migrate and not inst.busy:
            self.migrate_decodes(inst)
        self.check_drain(inst)

    def _in_place(self, inst: SimInstance, plan: Plan) -> None:
        """A MIXED instance becomes DECODE at once: it keeps its decodes and the prompts it
        has started; the prompts it has not started go elsewhere."""
        life.begin(inst, plan)
        inst.sched.role = inst.role
        self.host.refresh_targets()
        self._move_unstarted(inst)

    def migrate_decodes(self, inst: SimInstance) -> None:
        """Move the decodes running on draining ``inst`` (not busy) to other decode instances:
        their KV is held here until sent, as after a prefill; their first token stays."""
        sched = inst.sched
        for rid in sched.running_ids():
            self.migrating[rid] = sched.hold_decode(rid)
            self.migrations += 1
            self.host.route_decode(rid, inst.instance_id)

    def check_drain(self, inst: SimInstance) -> None:
        """Move a draining instance on once it holds no work."""
        if inst.state != InstanceState.DRAINING or not inst.drained:
            return
        inst.migrate = False
        if life.drained(inst) == InstanceState.STOPPED:
            inst.stop_s = self.q.now
            return
        self._after(inst, self.config.role_switch_s)

    def on_state(self, index: int, version: int) -> None:
        """A switch or cold start of instance ``index`` ended (event of ``version``)."""
        inst = self.instances[index]
        if version != inst.state_version:
            return
        life.switched(inst)
        inst.sched.role = inst.role
        self.host.refresh_targets()
        self.host.start(inst)

    # ------------------------------------------------------------------ accounting
    def gpu_seconds(self, end_s: float) -> float:
        tp = self.config.tp
        return sum(((inst.stop_s if inst.stop_s is not None else end_s) - inst.start_s) * tp
                   for inst in self.instances)


