"""The live controller: drives a cluster policy on the wall clock and switches roles live.

The policy objects are those of the simulator (:mod:`dopd.sim.policy`): every ``tick_s`` the
controller builds a :class:`~dopd.sim.policy.ClusterView` from the workers' latest stats and the
dispatcher's placements, calls ``on_tick`` (when the policy wants ticks) and applies the
actions; arrivals and outcomes are forwarded to the policy's hooks. A role switch (from the
policy or :meth:`Controller.switch`, the admin endpoint) is ACTIVE -> DRAINING (no new work of
the old role; in-flight requests finish there, handed-off KV is fetched) -> SWITCHING (the
worker changes its engine's role) -> ACTIVE in the new role, so no request is dropped.
Adding or removing instances (elastic policies) needs a ``scaler`` (the cluster of either
backend): an addition starts a worker and feeds its measured cold start to the policy's solver;
a removal drains the instance as a switch does, then stops it. Without a scaler such actions are
logged as refused decisions. Times given to the policy are seconds since the
controller started.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from typing import Any, Protocol

import numpy as np

from dopd.errors import DopdError
from dopd.serve.cluster import InstanceHandle
from dopd.serve.dispatch import Dispatcher, Observer, Tracked
from dopd.serve.errors import ServeError
from dopd.serve.metrics import ServeMetrics
from dopd.sim.policy import (
    Action,
    AddInstance,
    ClusterPolicy,
    ClusterView,
    InstanceView,
    RemoveInstance,
    SwitchRole,
)
from dopd.types import InstanceState, RequestOutcome, RequestState, Role

HISTORY_LEN = 900
WINDOW_S = 5.0
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


class Controller(Observer):
    """See the module docstring. ``drain_timeout_s`` bounds a switch's drain; when it passes the
    switch is cancelled and the instance goes back to ACTIVE in its old role. ``budget`` is the
    most instances alive at once (default: the instances there are)."""

    def __init__(self, policy: ClusterPolicy, instances: dict[int, InstanceHandle],
                 dispatcher: Dispatcher, metrics: ServeMetrics, *, tick_s: float = 1.0,
                 drain_timeout_s: float = 120.0, scaler: Scaler | None = None,
                 budget: int | None = None) -> None:
        self.policy = policy
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
        self._recent: deque[tuple[float, float | None, float | None]] = deque()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._scaling: set[asyncio.Task[None]] = set()
        self._unlisted = 0  # additions decided but not yet listed in ``instances``
        self._arrival_hook = type(policy).on_arrival is not ClusterPolicy.on_arrival
        self._done_hook = type(policy).on_request_done is not ClusterPolicy.on_request_done

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ------------------------------------------------------------------ observer hooks
    def on_arrival(self, t: Tracked) -> None:
        self.arrived += 1
        if self._arrival_hook:
            self.policy.on_arrival(t.arrival - self.t0, t.rid, len(t.prompt_ids),
                                   t.params.max_tokens)

    def on_done(self, t: Tracked, outcome: RequestOutcome) -> None:
        self.ended += 1
        if outcome.state == RequestState.FINISHED:
            self.finished += 1
            self._recent.append((time.monotonic(), outcome.ttft_s, outcome.tpot_s))
        if self._done_hook:
            shift = self.t0
            self.policy.on_request_done(self.now(), dataclasses.replace(
                outcome, arrival_s=outcome.arrival_s - shift,
                first_token_s=None if outcome.first_token_s is None
                else outcome.first_token_s - shift,
                finish_s=None if outcome.finish_s is None else outcome.finish_s - shift))

    # ------------------------------------------------------------------ view and loop
    def view(self) -> ClusterView:
        """The policy's snapshot of the cluster now."""
        views = []
        for iid, h in sorted(self.instances.items()):
            s = h.stats
            views.append(InstanceView(
                iid, h.role, h.state, h.target_role, int(s.get("queued_prefill_tokens", 0)),
                int(s.get("waiting", 0)), int(s.get("prefilling", 0)),
                int(s.get("decode_batch", 0)), int(s.get("decode_ctx_sum", 0)),
                int(s.get("pending_decodes", 0)), int(s.get("kv_used_blocks", 0)),
                max(1, int(s.get("kv_total_blocks", 1))), float(s.get("recent_step_s", 0.0)),
                int(s.get("steps", 0))))
        budget = self.budget if self.budget is not None else len(self.instances)
        return ClusterView(self.now(), tuple(views), budget, self.arrived, self.ended)

    async def run(self) -> None:
        """Tick until cancelled."""
        while True:
            await asyncio.sleep(self.tick_s)
            self.sample()
            if self.policy.wants_ticks:
                for action in self.policy.on_tick(self.now(), self.view()):
                    self.apply(action)

    def apply(self, action: Action) -> None:
        if isinstance(action, SwitchRole):
            try:
                self.switch(action.instance_id, action.role, action.reason or "policy",
                            source="policy")
            except ServeError as exc:
                self._decide(action.instance_id, None, action.role, action.reason, "policy",
                             f"refused: {exc.message}")
        elif self.scaler is None:
            iid = getattr(action, "instance_id", None)
            role = getattr(action, "role", None)
            self._decide(iid, None, role, action.reason, "policy",
                         "refused: this pool has a fixed size")
        elif isinstance(action, AddInstance):
            self._add(action)
        elif isinstance(action, RemoveInstance):
            self._remove(action)

    def sample(self) -> None:
        """Append one point to :attr:`history` (P/D counts, load, recent TTFT/TPOT medians)."""
        cutoff = time.monotonic() - WINDOW_S
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        ttfts = [x for _, x, _ in self._recent if x is not None]
        tpots = [y for _, _, y in self._recent if y is not None]
        counts = {r: 0 for r in Role}
        for h in self.instances.values():
            if h.state == InstanceState.ACTIVE:
                counts[h.role] += 1
        self.history.append({
            "t": round(self.now(), 3), "prefill": counts[Role.PREFILL],
            "decode": counts[Role.DECODE], "mixed": counts[Role.MIXED],
            "in_flight": len(self.dispatcher.tracked),
            "load": {str(i): self.dispatcher.holding(i) for i in self.instances},
            "ttft_p50": float(np.median(ttfts)) if ttfts else None,
            "tpot_p50": float(np.median(tpots)) if tpots else None})

    # ------------------------------------------------------------------ role switches
    def switch(self, iid: int, role: Role, reason: str = "admin", *,
               source: str = "admin") -> dict[str, Any]:
        """Start switching ``iid`` to ``role``; returns the decision record. ServeError 404 for
        an unknown instance, 409 when it is not ACTIVE or already in that role."""
        h = self.instances.get(iid)
        if h is None:
            raise ServeError(404, f"no instance {iid}", code="instance_not_found")
        if h.state != InstanceState.ACTIVE:
            raise ServeError(409, f"instance {iid} is {h.state}, not active", code="conflict")
        if h.role == role:
            raise ServeError(409, f"instance {iid} is already {role}", code="conflict")
        decision = self._decide(iid, h.role, role, reason, source, "draining")
        h.state = InstanceState.DRAINING
        h.target_role = role
        self._tasks[iid] = asyncio.create_task(self._switch(h, role, decision))
        return decision

    async def _switch(self, h: InstanceHandle, role: Role, decision: dict[str, Any]) -> None:
        iid = h.instance_id
        old = h.role
        try:
            if not await self._drained(h):
                h.state, h.target_role = InstanceState.ACTIVE, None
                decision["status"] = "cancelled: drain timed out"
                return
            h.state = InstanceState.SWITCHING
            decision["status"] = "switching"
            ack = self.dispatcher.expect_role(iid)
            if not h.send({"op": "set_role", "role": str(role)}):
                raise TimeoutError
            await asyncio.wait_for(ack, ROLE_ACK_TIMEOUT_S)
            h.role = role
            h.state, h.target_role = InstanceState.ACTIVE, None
            self.switches += 1
            self.metrics.role_switches.inc()
            decision.update(status="done", done_t=round(self.now(), 3))
        except TimeoutError:
            if h.state != InstanceState.STOPPED:
                h.state, h.target_role = InstanceState.ACTIVE, None
            decision["status"] = f"failed: instance {iid} did not confirm the role {role}"
            h.role = old
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
                if (h.stats_t > zero_since and s.get("unfinished", 1) == 0
                        and s.get("held", 1) == 0 and s.get("pending_decodes", 1) == 0):
                    return True
            else:
                zero_since = None
            await asyncio.sleep(0.02)
        return False

    # ------------------------------------------------------------------ elastic pools
    def _add(self, action: AddInstance) -> None:
        alive = sum(1 for h in self.instances.values() if h.state != InstanceState.STOPPED)
        alive += self._unlisted
        budget = self.budget if self.budget is not None else len(self.instances)
        if alive >= budget:
            self._decide(None, None, action.role, action.reason, "policy",
                         f"refused: {alive} of at most {budget} instances are alive")
            return
        decision = self._decide(None, None, action.role, action.reason, "policy", "starting")
        self._unlisted += 1
        task = asyncio.create_task(self._start_instance(action.role, decision))
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

    def _remove(self, action: RemoveInstance) -> None:
        iid = action.instance_id
        h = self.instances.get(iid)
        others = sum(1 for i, x in self.instances.items()
                     if i != iid and x.state == InstanceState.ACTIVE)
        if h is None or h.state != InstanceState.ACTIVE or others == 0:
            why = "no such instance" if h is None else \
                f"it is {h.state}" if h.state != InstanceState.ACTIVE else "it is the last one"
            self._decide(iid, None, None, action.reason, "policy", f"refused: {why}")
            return
        decision = self._decide(iid, h.role, None, action.reason, "policy", "draining")
        h.state, h.target_role = InstanceState.DRAINING, None
        self._tasks[iid] = asyncio.create_task(self._stop_instance(h, decision))

    async def _stop_instance(self, h: InstanceHandle, decision: dict[str, Any]) -> None:
        assert self.scaler is not None
        try:
            if not await self._drained(h):
                h.state = InstanceState.ACTIVE
                decision["status"] = "cancelled: drain timed out"
                return
            await self.scaler.remove_instance(h.instance_id)
            decision.update(status="done", done_t=round(self.now(), 3))
        finally:
            self._tasks.pop(h.instance_id, None)

    def feed_cold_start(self, seconds: float) -> None:
        """Record a measured cold start and give the median so far to the policy's ratio
        solver (policies with a ``solver_config`` that has ``cold_start_s``: ``dopd``)."""
        self.cold_starts.append(seconds)
        config = getattr(self.policy, "solver_config", None)
        if dataclasses.is_dataclass(config) and hasattr(config, "cold_start_s"):
            median = float(np.median(self.cold_starts))
            self.policy.solver_config = dataclasses.replace(  # type: ignore[attr-defined]
                config, cold_start_s=median)

    def _decide(self, iid: int | None, old: Role | None, new: Role | None, reason: str,
                source: str, status: str) -> dict[str, Any]:
        record = {"t": round(self.now(), 3), "instance": iid,
                  "from": None if old is None else str(old),
                  "to": None if new is None else str(new), "reason": reason, "source": source,
                  "status": status}
        self.decisions.append(record)
        return record

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._scaling]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
