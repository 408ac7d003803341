"""A simulated instance: the engine's scheduler plus life-cycle state; the cluster's
:class:`~dopd.sim.truth.HardwareTruth` times its steps (the instance holds no reference to it, so
a router reading instances cannot reach the truth).

The instance runs one step (or one multi-step decode run) at a time. The cluster starts work with
:meth:`SimInstance.next_work` and finishes it when its STEP event fires (:meth:`finish_work`).
New work arriving during a decode run cuts the run short at the end of the step in progress
(:meth:`cut_run`), exactly where a real engine would let it join the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dopd.control.flow.requests import HandoffQueue
from dopd.engine import (
    BlockManager,
    DecodeRun,
    Scheduler,
    SchedulerConfig,
    StepOutcome,
    StepPlan,
    StepResult,
)
from dopd.types import InstanceState, Role

if TYPE_CHECKING:
    from dopd.sim.truth import HardwareTruth

_EWMA = 0.2  # weight of the newest step in the recent step time


class SimInstance:
    """One instance of the simulated cluster (mutable; the cluster owns it).

    ``pending`` holds (request id, source instance) of remote decodes routed here that wait for
    KV memory (``pending_tokens``: the KV tokens they need); ``incoming`` counts transfers in
    flight to it. It reads as :class:`~dopd.control.flow.view.InstanceSignals` for the policy's
    view. ``migrate``: while DRAINING, its
    decodes move to other instances. Times are simulated seconds. ``observed`` is the last
    finished work as a worker would report it: ``(prefill_new_tokens, prefill_attn_sum,
    prefill_count, decode_count, decode_ctx_sum, steps, seconds)`` (a decode run's first step's
    sums and its step count).
    """

    __slots__ = ("busy", "busy_until", "cut_steps", "incoming", "instance_id", "migrate",
                 "observed", "pending", "plan", "result", "role", "run",
                 "run_factor", "run_start", "sched", "start_s", "state", "state_version",
                 "step_s", "steps", "stop_s", "target_role", "version")

    def __init__(self, instance_id: int, role: Role, state: InstanceState, now: float,
                 sched_config: SchedulerConfig, num_blocks: int, block_size: int) -> None:
        self.instance_id = instance_id
        self.role = role
        self.target_role: Role | None = None
        self.migrate = False
        self.state = state
        self.state_version = 0
        self.sched = Scheduler(sched_config,
                               BlockManager(num_blocks, block_size, sched_config.watermark), role)
        self.busy = False
        self.busy_until = now
        self.version = 0
        self.plan: StepPlan | None = None
        self.result: StepResult | None = None
        self.run: DecodeRun | None = None
        self.run_start = 0.0
        self.run_factor = 1.0
        self.cut_steps = 0
        self.observed: tuple[int, int, int, int, int, int, float] = (0, 0, 0, 0, 0, 0, 0.0)
        self.pending: HandoffQueue[tuple[int, int]] = HandoffQueue()
        self.incoming = 0
        self.start_s = now
        self.stop_s: float | None = None
        self.step_s = 0.0
        self.steps = 0

    # ------------------------------------------------------------------ signals
    @property
    def pending_tokens(self) -> int:
        return self.pending.tokens

    @property
    def queued_prefill_tokens(self) -> int:
        return self.sched.queued_prefill_tokens

    @property
    def waiting(self) -> int:
        return self.sched.num_waiting

    @property
    def prefilling(self) -> int:
        return self.sched.num_prefilling

    @property
    def decode_batch(self) -> int:
        return self.sched.num_decoding

    @property
    def decode_ctx_sum(self) -> int:
        return self.sched.decode_kv_sum

    @property
    def pending_decodes(self) -> int:
        return len(self.pending)

    @property
    def kv_used_blocks(self) -> int:
        return self.sched.blocks.used_blocks

    @property
    def kv_total_blocks(self) -> int:
        return self.sched.blocks.num_blocks

    @property
    def recent_step_s(self) -> float:
        return self.step_s

    @property
    def accepts_prefill(self) -> bool:
        return self.state == InstanceState.ACTIVE and self.role != Role.DECODE

    @property
    def accepts_decode(self) -> bool:
        return self.state == InstanceState.ACTIVE and self.role != Role.PREFILL

    @property
    def drained(self) -> bool:
        """No request, no pending hand-off, no transfer in flight to it."""
        return self.sched.is_idle and not self.pending and self.incoming == 0

    def free_at(self, now: float) -> float:
        """When newly queued work could start: the end of the step in progress (a decode run is
        cut after its current step)."""
        if not self.busy:
            return now
        if self.run is not None:
            return min(self.busy_until, now + self.step_s)
        return self.busy_until

    # ------------------------------------------------------------------ work
    def next_work(self, now: float, max_run_steps: int, truth: HardwareTruth) -> float | None:
        """Start the next step or decode run if idle and there is work, timed by ``truth``;
        returns its end time."""
        sched = self.sched
        run = sched.begin_decode_run(max_run_steps) if sched.num_decoding else None
        if run is not None:
            self.run = run
            self.run_start = now
            self.cut_steps = run.steps
            self.run_factor = truth.run_factor(run, now)
            end = now + truth.run_time(run, self.run_factor)
        else:
            plan = sched.schedule()
            if plan is None:
                return None
            result = truth.execute(plan, now)
            self.plan = plan
            self.result = result
            end = now + result.duration_s
        self.busy = True
        self.busy_until = end
        self.version += 1
        return end

    def finish_work(self, truth: HardwareTruth) -> StepOutcome:
        """Apply the step or run that just ended (``truth``: the one that timed it)."""
        self.busy = False
        run = self.run
        if run is not None:
            self.run = None
            steps = self.cut_steps
            if steps:
                duration = truth.run_time(run, self.run_factor, steps)
                self.step_s += _EWMA * (duration / steps - self.step_s)
                self.steps += steps
                self.observed = (0, 0, 0, run.decode_count, run.ctx_sum_start, steps, duration)
            else:
                self.observed = (0, 0, 0, 0, 0, 0, 0.0)
            return self.sched.end_decode_run(steps)
        plan, result = self.plan, self.result
        assert plan is not None and result is not None
        self.plan = self.result = None
        self.step_s += _EWMA * (result.duration_s - self.step_s)
        self.steps += 1
        self.observed = (plan.prefill_new_tokens, plan.prefill_attn_sum, len(plan.prefill),
                         len(plan.decode_ids), plan.decode_ctx_sum, 1, result.duration_s)
        return self.sched.complete(plan, result)

    def cut_run(self, now: float, truth: HardwareTruth) -> float | None:
        """End the active decode run after the step in progress; returns the new end time, or
        None when the run already ends then (or no run is active)."""
        run = self.run
        if run is None:
            return None
        done = truth.steps_within(run, self.run_factor, now - self.run_start)
        steps = done + 1
        if steps >= self.cut_steps:
            return None
        self.cut_steps = steps
        end = self.run_start + truth.run_time(run, self.run_factor, steps)
        end = max(end, now)
        self.busy_until = end
        self.version += 1
        return end
