"""The live controller: drives a cluster policy on the wall clock and switches roles live.

The policy objects are those of the simulator (:mod:`dopd.control.policies.base`), and what
their actions mean is decided by the shared life-cycle machine
(:mod:`dopd.control.flow.instances`), as in the simulator: every ``tick_s`` the controller
builds the policy's :class:`~dopd.control.policies.base.ClusterView` from the workers' latest
stats (:func:`~dopd.control.flow.view.build_view`), calls ``on_tick`` (when the policy wants
ticks) and applies the actions; arrivals and outcomes are forwarded to the policy's hooks. A
role switch (from the policy or :meth:`Controller.switch`, the admin endpoint) is ACTIVE ->
DRAINING (no new work; its prompts that have not started are placed elsewhere, in-flight
requests finish there, handed-off KV is fetched; with ``migrate`` its decodes move to other
instances too, their KV recomputed there from the prompt and the tokens so far) -> SWITCHING
(the worker changes its engine's role) -> ACTIVE in the new role, so no request is dropped. An
``in_place`` switch (MIXED -> DECODE) changes the role at once; its prompts not started move.
Adding or removing instances (elastic policies) needs a ``scaler`` (the cluster of either
backend): an addition starts a worker and feeds its measured cold start to the policy's solver;
a removal drains the instance as a switch does, then stops it. Without a scaler such actions are
logged as refused decisions. Times given to the policy are seconds since the
controller started, in the deployment's modeled time: wall seconds divided by ``time_scale``
(emulated mode's step-time scale, so a policy sees the arrival rates, step times and latencies
of the GPU it models, as in the simulator, and ticks every ``tick_s`` modeled seconds).

For the dashboard it keeps :attr:`Controller.history` (one point a tick: P/D counts, load,
P50/P90 latency, SLO attainment, goodput, arrival rate of the last ``WINDOW_S`` seconds, and the
policy's newest rate forecast with its upper bound) and :attr:`Controller.decisions` (each role
change with why: the policy's plan behind it, see :mod:`dopd.serve.insight`, and the latency
observed in the ``SETTLE_S`` seconds before the decision and after it took effect).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from typing import Any, Protocol

import numpy as np

from dopd.control.flow import instances as life
from dopd.control.flow.instances import Plan, Refused, Step
from dopd.control.flow.view import build_view
from dopd.control.policies.base import (
    Action,
    ClusterPolicy,
    ClusterView,
    InstanceView,
    SwitchRole,
)
from dopd.errors import DopdError, require
from dopd.serve.cluster import InstanceHandle
from dopd.serve.dispatch import Dispatcher
from dopd.serve.errors import ServeError
from dopd.serve.in_flight import Observer, Tracked
from dopd.serve.insight import latest_forecast, plan_view, policy_log
from dopd.serve.messages import SetRole
from dopd.serve.metrics import ServeMetrics
from dopd.serve.outcomes import OutcomeLog
from dopd.types import SLO, InstanceState, RequestOutcome, RequestState, Role

HISTORY_LEN = 900
WINDOW_S = 5.0
"""Seconds of requests each history point summarises."""
SETTLE_S = 10.0
"""Seconds of requests observed before a decision and after it took effect."""
ROLE_ACK_TIMEOUT_S = 10.0


class Scaler(Protocol):
    """Starts and stops instances of an elastic pool (a cluster backend)."""

    async def add_instance(self, role: Role) -> Any:
        """Start an instance in ``role`` and wait until it is ready; returns its handle (with
        ``instance_id`` and the measured ``cold_start_s``); DopdError when it fails. The new
        instance is listed (STARTING) before the first wait."""
        ...

    async def remove_instance(self, iid: int) -> None:
        """Stop the (drained) instance ``iid``."""
        ...


def instance_view_of(h: InstanceHandle, time_scale: float = 1.0) -> InstanceView:
    """A live instance as the policy's view reads it: its handle's role and state, its
    worker's latest stats (an :class:`~dopd.control.flow.view.InstanceSignals` itself), its
    step time in modeled seconds (wall seconds / ``time_scale``)."""
    s = h.stats
    return InstanceView(h.instance_id, h.role, h.state, h.target_role, s.queued_prefill_tokens,
                        s.waiting, s.prefilling, s.decode_batch, s.decode_ctx_sum,
                        s.pending_decodes, s.kv_used_blocks, max(1, s.kv_total_blocks),
                        s.recent_step_s / time_scale, s.steps)


class Controller(Observer):
    """See the module docstring. ``drain_timeout_s`` bounds a switch's drain; when it passes the
    switch is cancelled and the instance goes back to ACTIVE in its old role. ``budget`` is the
    most instances alive at once (default: the instances there are). ``slo`` (None: none)
    defines the attainment and goodput of :attr:`history`. ``time_scale``: wall seconds per
    modeled second of what the policy is told (see the module docstring)."""

    def __init__(self, policy: ClusterPolicy, instances: dict[int, InstanceHandle],
                 dispatcher: Dispatcher, metrics: ServeMetrics, *, tick_s: float = 1.0,
                 drain_timeout_s: float = 120.0, scaler: Scaler | None = None,
                 budget: int | None = None, slo: SLO | None = None,
                 time_scale: float = 1.0) -> None:
        require(time_scale > 0, f"time_scale must be > 0, got {time_scale}")
        self.policy = policy
        self.time_scale = time_scale
        self.instances = instances
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.tick_s = policy.tick_s or tick_s
        self.drain_timeout_s = drain_timeout_s
        self.scaler = scaler
        self.budget = budget
        self.cold_starts: list[float] = []
        self.t0 = time.monotonic()
        self.decisions: deque[dict[str, Any]] = deque(maxlen=200)
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_LEN)
        self.switches = 0
        self.arrived = 0
        self.finished = 0
        self.ended = 0
        self.slo = slo
        self.outcomes = OutcomeLog(slo)
        self.log = policy_log(policy)
        self._unsettled: list[dict[str, Any]] = []
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._scaling: set[asyncio.Task[None]] = set()
        self._unlisted = 0  # additions decided but not yet listed in ``instances``
        self._arrival_hook = type(policy).on_arrival is not ClusterPolicy.on_arrival
        self._done_hook = type(policy).on_request_done is not ClusterPolicy.on_request_done

    def now(self) -> float:
        """Wall seconds since the controller started (the dashboard's and decisions' time)."""
        return time.monotonic() - self.t0

    def policy_time(self, mono: float | None = None) -> float:
        """``mono`` (``time.monotonic()`` seconds; None: now) as the policy's time: modeled
        seconds since the controller started."""
        return ((time.monotonic() if mono is None else mono) - self.t0) / self.time_scale

    # ------------------------------------------------------------------ observer hooks
    def on_arrival(self, t: Tracked) -> None:
        self.arrived += 1
        self.outcomes.arrival(t.arrival)
        if self._arrival_hook:
            self.policy.on_arrival(self.policy_time(t.arrival), t.rid, len(t.prompt_ids),
                                   t.params.max_tokens)

    def on_done(self, t: Tracked, outcome: RequestOutcome) -> None:
        self.ended += 1
        self.outcomes.end(time.monotonic(), outcome)
        if outcome.state == RequestState.FINISHED:
            self.finished += 1
        if self._done_hook:
            at = self.policy_time
            self.policy.on_request_done(at(), dataclasses.replace(
                outcome, arrival_s=at(outcome.arrival_s),
                first_token_s=None if outcome.first_token_s is None
                else at(outcome.first_token_s),
                finish_s=None if outcome.finish_s is None else at(outcome.finish_s)))

    # ------------------------------------------------------------------ view and loop
    def view(self) -> ClusterView:
        """The policy's snapshot of the cluster now (in its time, see :meth:`policy_time`)."""
        scale = self.time_scale
        return build_view(self.policy_time(),
                          (instance_view_of(h, scale) for h in self.instances.values()),
                          self._budget(), self.arrived, self.ended)

    def _budget(self) -> int:
        return self.budget if self.budget is not None else len(self.instances)

    async def run(self) -> None:
        """Tick until cancelled."""
        while True:
            await asyncio.sleep(self.tick_s * self.time_scale)
            self.sample()
            self.settle()
            if self.policy.wants_ticks:
                logged = len(self.log) if self.log is not None else 0
                actions = self.policy.on_tick(self.policy_time(), self.view())
                plan = self._plan_of(logged) if actions else None
                for action in actions:
                    self.apply(action, plan)

    def _plan_of(self, logged: int) -> dict[str, Any] | None:
        """The policy's plan behind the actions of this tick: its newest log record that
        ordered actions, if it logged one since ``logged`` records (as a JSON-ready view)."""
        if self.log is None:
            return None
        for record in reversed(self.log.records[logged:]):
            if record.get("actions"):
                return dataclasses.asdict(plan_view(record))
        return None

    def apply(self, action: Action, plan: dict[str, Any] | None = None) -> None:
        """Carry out one policy action; ``plan`` (a :class:`~dopd.serve.insight.PlanView`
        as a dict) is the plan behind it, kept with the decision."""
        why = plan["why"] if plan and plan.get("why") else action.reason or "policy"
        iid = getattr(action, "instance_id", None)
        role = getattr(action, "role", None)
        if self.scaler is None and not isinstance(action, SwitchRole):
            self._decide(iid, None, role, why, "policy",
                         "refused: this pool has a fixed size", plan)
            return
        try:
            decided = life.plan_action(action, self.instances.values(), self._budget(),
                                       self._unlisted)
        except DopdError as exc:
            self._decide(iid, None, role, why, "policy", f"refused: {exc}", plan)
            return
        if decided.step == Step.ADD:
            self._add(decided, why, plan)
        elif decided.stops:
            self._remove(decided, why, plan)
        else:
            self._switch_by(decided, why, "policy", plan)

    def window(self, start: float, end: float) -> dict[str, Any]:
        """:class:`~dopd.serve.outcomes.OutcomeStats` of ``[start, end]`` (seconds since the
        start) as a dict."""
        return dataclasses.asdict(self.outcomes.summary(start + self.t0, end + self.t0,
                                                        self.t0))

    def sample(self) -> None:
        """Append one point to :attr:`history`: P/D counts (ACTIVE instances by role, and
        those in transition), requests in flight and waiting for a prefill, P50/P90 TTFT and
        TPOT (s), SLO attainment, goodput and arrival rate (req/s) of the last ``WINDOW_S``,
        the policy's newest forecast (req/s), the largest share of KV cache in use on an
        ACTIVE prefill instance (``kv_prefill``) and on a decode or mixed one (``kv_decode``;
        None without such an instance), wall-clock time (Unix seconds)."""
        mono = time.monotonic()
        self.outcomes.evict(mono)
        now = mono - self.t0
        recent = self.outcomes.summary(mono - min(WINDOW_S, max(now, 1e-3)), mono, self.t0)
        counts = {r: 0 for r in Role}
        moving = 0
        kv: dict[str, float | None] = {"prefill": None, "decode": None}
        for h in self.instances.values():
            if h.state == InstanceState.ACTIVE:
                counts[h.role] += 1
                total = h.stats.kv_total_blocks
                if total:
                    side = "prefill" if h.role == Role.PREFILL else "decode"
                    use = h.stats.kv_used_blocks / total
                    kv[side] = max(kv[side] or 0.0, use)
            elif h.state != InstanceState.STOPPED:
                moving += 1
        forecast, upper = latest_forecast(self.log)
        self.history.append({
            "t": round(now, 3), "wall": round(time.time(), 3), "prefill": counts[Role.PREFILL],
            "decode": counts[Role.DECODE], "mixed": counts[Role.MIXED], "transitioning": moving,
            "in_flight": len(self.dispatcher.tracked),
            "waiting": sum(h.stats.waiting for h in self.instances.values()),
            "load": {str(i): self.dispatcher.holding(i) for i in self.instances},
            "ttft_p50": recent.ttft_p50_s, "ttft_p90": recent.ttft_p90_s,
            "tpot_p50": recent.tpot_p50_s, "tpot_p90": recent.tpot_p90_s,
            "attainment": recent.attainment, "goodput_rps": recent.goodput_rps,
            "arrival_rps": round(recent.arrival_rps, 4), "forecast_rps": forecast,
            "forecast_upper_rps": upper, "kv_prefill": kv["prefill"], "kv_decode": kv["decode"]})

    def settle(self) -> None:
        """Attach ``observed_after`` to decisions that took effect ``SETTLE_S`` ago (or ended
        without effect: refused, failed, cancelled)."""
        now = self.now()
        waiting = []
        for d in self._unsettled:
            status = d["status"]
            if status in ("draining", "switching", "starting"):
                waiting.append(d)
                continue
            since = float(d.get("done_t") or d["t"])
            if now < since + SETTLE_S:
                waiting.append(d)
                continue
            d["observed_after"] = self.window(since, since + SETTLE_S)
        self._unsettled = waiting

    # ------------------------------------------------------------------ role switches
    def switch(self, iid: int, role: Role, reason: str = "admin", *,
               source: str = "admin", plan: dict[str, Any] | None = None) -> dict[str, Any]:
        """Start switching ``iid`` to ``role``; returns the decision record. ServeError 404 for
        an unknown instance, 409 when it is not ACTIVE or already in that role."""
        try:
            decided = life.plan_switch(self.instances.values(), iid, role)
        except Refused as exc:
            code = "instance_not_found" if exc.status == 404 else "conflict"
            raise ServeError(exc.status, str(exc), code=code) from None
        return self._switch_by(decided, reason, source, plan)

    def _switch_by(self, decided: Plan, reason: str, source: str,
                   plan: dict[str, Any] | None) -> dict[str, Any]:
        """Start the switch ``decided`` (a drain, or an in-place change); returns the
        decision record."""
        assert decided.instance_id is not None and decided.role is not None
        iid, role = decided.instance_id, decided.role
        h = self.instances[iid]
        old = h.role
        in_place = decided.step == Step.IN_PLACE
        decision = self._decide(iid, old, role, reason, source,
                                "switching" if in_place else "draining", plan)
        life.begin(h, decided)
        self.dispatcher.drain(iid, decided.migrate)
        self._tasks[iid] = asyncio.create_task(self._switch(h, old, role, decision, in_place))
        return decision

    async def _switch(self, h: InstanceHandle, old: Role, role: Role, decision: dict[str, Any],
                      in_place: bool) -> None:
        """Drain ``h`` (unless ``in_place``), then have its worker take ``role``."""
        iid = h.instance_id
        try:
            if not in_place:
                if not await self._drained(h):
                    life.cancel(h, old)
                    decision["status"] = "cancelled: drain timed out"
                    return
                life.drained(h)
                decision["status"] = "switching"
            ack = self.dispatcher.expect_role(iid)
            if not h.send(SetRole(role)):
                raise TimeoutError
            await asyncio.wait_for(ack, ROLE_ACK_TIMEOUT_S)
            life.switched(h)
            self.switches += 1
            self.metrics.role_switches.inc()
            decision.update(status="done", done_t=round(self.now(), 3))
        except TimeoutError:
            life.cancel(h, old)
            decision["status"] = f"failed: instance {iid} did not confirm the role {role}"
        finally:
            self._tasks.pop(iid, None)

    async def _drained(self, h: InstanceHandle) -> bool:
        """Wait until ``h`` holds no request of the front end and a fresh stats report shows no
        unfinished work nor leased KV; False on timeout."""
        deadline = time.monotonic() + self.drain_timeout_s
        zero_since: float | None = None
        while time.monotonic() < deadline:
            if self.dispatcher.holding(h.instance_id) == 0:
                zero_since = zero_since or time.monotonic()
                s = h.stats
                if (h.stats_t > zero_since and s.unfinished == 0 and s.held == 0
                        and s.pending_decodes == 0):
                    return True
            else:
                zero_since = None
            await asyncio.sleep(0.02)
        return False

    # ------------------------------------------------------------------ elastic pools
    def _add(self, decided: Plan, why: str, plan: dict[str, Any] | None) -> None:
        assert decided.role is not None
        decision = self._decide(None, None, decided.role, why, "policy", "starting", plan)
        self._unlisted += 1
        task = asyncio.create_task(self._start_instance(decided.role, decision))
        self._scaling.add(task)
        task.add_done_callback(self._scaling.discard)

    async def _start_instance(self, role: Role, decision: dict[str, Any]) -> None:
        assert self.scaler is not None
        self._unlisted -= 1  # add_instance lists the instance before it first waits
        try:
            h = await self.scaler.add_instance(role)
        except DopdError as exc:
            decision["status"] = f"failed: {exc}"
            return
        decision.update(instance=h.instance_id, status="done", done_t=round(self.now(), 3),
                        cold_start_s=round(h.cold_start_s, 3))
        self.feed_cold_start(h.cold_start_s)

    def _remove(self, decided: Plan, reason: str, plan: dict[str, Any] | None) -> None:
        assert decided.instance_id is not None
        iid = decided.instance_id
        h = self.instances[iid]
        decision = self._decide(iid, h.role, None, reason, "policy", "draining", plan)
        life.begin(h, decided)
        self.dispatcher.drain(iid, decided.migrate)
        self._tasks[iid] = asyncio.create_task(self._stop_instance(h, decision))

    async def _stop_instance(self, h: InstanceHandle, decision: dict[str, Any]) -> None:
        assert self.scaler is not None
        try:
            if not await self._drained(h):
                life.cancel(h, h.role)
                decision["status"] = "cancelled: drain timed out"
                return
            await self.scaler.remove_instance(h.instance_id)

            decision.update(status="done", done_t=round(self.now(), 3))
        finally:
            self._tasks.pop(h.instance_id, None)

    def feed_cold_start(self, seconds: float) -> None:
        """Record a measured cold start (wall seconds) and give the median so far, in the
        policy's time, to its ratio solver (policies with a ``solver_config`` that has
        ``cold_start_s``: ``dopd``)."""
        self.cold_starts.append(seconds / self.time_scale)
        config = getattr(self.policy, "solver_config", None)
        if dataclasses.is_dataclass(config) and hasattr(config, "cold_start_s"):
            median = float(np.median(self.cold_starts))
            self.policy.solver_config = dataclasses.replace(  # type: ignore[attr-defined]
                config, cold_start_s=median)

    def _decide(self, iid: int | None, old: Role | None, new: Role | None, reason: str,
                source: str, status: str, plan: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        """Log a decision: ``reason`` says why (for a policy's action, the plan's ``why``);
        ``plan`` is the policy's plan behind it (a PlanView dict, None for admin requests);
        ``observed_before`` the requests of the last ``SETTLE_S`` seconds."""
        now = self.now()
        record = {"t": round(now, 3), "wall": round(time.time(), 3), "instance": iid,
                  "from": None if old is None else str(old),
                  "to": None if new is None else str(new), "reason": reason, "source": source,
                  "status": status, "plan": plan,
                  "observed_before": self.window(max(now - SETTLE_S, 0.0), now),
                  "observed_after": None}
        self.decisions.append(record)
        self._unsettled.append(record)
        return record

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._scaling]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
