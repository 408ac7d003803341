"""The simulated cluster: request flow through instances, KV hand-offs, and the event loop.

Request flow (decided by the shared machine, :mod:`dopd.control.flow`; this module carries it
out on simulated time). At arrival a request is routed to an instance that accepts prefill. On
a ``MIXED`` instance it prefills and decodes in place (first token at the end of its prefill
step). On a ``PREFILL`` instance the completed prompt's KV stays there while the router picks a
decode instance; the request waits in that instance's hand-off queue until its KV blocks
are reserved (admission waits for KV memory), then the bytes go over the sender's link
(:class:`~dopd.kv.modeled_link.TransferNetwork`) and the prefill instance frees them on arrival.
The first token reaches the user when the KV (and the token sampled with it) arrives at the
decode instance, so TTFT includes waiting for decode memory and the transfer (as the DESIGN's
solver assumes); TPOT runs from there. One-token outputs finish on the prefill instance.

A router that overrides :meth:`~dopd.control.routing.router.Router.place` decides each arrival in
full: it
may reject the request (REJECTED, with the router's reason: admission control) or send it to a
``DECODE`` instance, which then prefills and decodes it in place with no KV hand-off (bypass).
The router also sets the instances' scheduler settings (queue order); with a short-first queue,
its time-based aging is applied whenever an instance starts work. With one kind of instance
only (:func:`~dopd.control.flow.requests.placement_pools`), requests are served whole: on
DECODE instances alone each prefills and decodes its requests; on PREFILL instances alone each
decodes its requests too (``local``).

Events: see :class:`~dopd.sim.events.Kind`. Decode-only batches advance in multi-step runs that
end at the first finish or when new work arrives (the run is cut after the step in progress), so
long decodes cost a few events instead of one per token. Instance life cycle (role switches,
adding and removing instances) is :class:`~dopd.sim.lifecycle.SimLifecycle`; the timeline is
:class:`~dopd.sim.timeline.TimelineRecorder`; the policy's view is built by
:func:`~dopd.control.flow.view.build_view`.

Truth and belief: the cluster alone holds the :class:`~dopd.sim.truth.HardwareTruth` that times
the steps. After every step or decode run it reports the batch and the observed duration to the
control plane's belief (:meth:`~dopd.control.calibration.CalibratedLatency.observe_step`), as a
live worker would, and, for routers that predict a TTFT at placement, the predicted and observed
TTFT of each finished request.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from dopd.control.calibration import CalibratedLatency
from dopd.control.cluster_models import ClusterModels
from dopd.control.flow.instances import scheduler_config
from dopd.control.flow.requests import Whole, placement_pools
from dopd.control.flow.view import build_view
from dopd.control.policies.base import Action, ClusterPolicy, ClusterView
from dopd.control.routing.router import Router
from dopd.engine import SchedulerConfig
from dopd.errors import require
from dopd.kv.modeled_link import TransferNetwork
from dopd.sim.api import SimConfig
from dopd.sim.events import EventQueue, Kind
from dopd.sim.instance import SimInstance
from dopd.sim.lifecycle import SimLifecycle
from dopd.sim.timeline import TimelineRecorder
from dopd.sim.truth import HardwareTruth
from dopd.types import InstanceState, RequestOutcome, RequestState, Role

_FINISHED = int(RequestState.FINISHED)
_REJECTED = int(RequestState.REJECTED)
_ABORTED = int(RequestState.ABORTED)
_MAX_RUN = 1 << 40
STALL_S = 600.0
"""When only the policy's ticks are left (no work in flight, requests stranded), ticking stops
after this long unless the policy acts, so a run always ends; stranded requests end aborted."""


class SimCluster:
    """One simulated run: instances, routing, KV transfers and the event loop (:meth:`run`)."""

    def __init__(self, arrival_s: list[float], prompt: list[int], output: list[int],
                 config: SimConfig, models: ClusterModels, policy: ClusterPolicy, router: Router,
                 truth: HardwareTruth, belief: CalibratedLatency,
                 progress: Callable[[float], None] | None = None) -> None:
        n = len(arrival_s)
        self.n = n
        self.arrival_s = arrival_s
        self.prompt = prompt
        self.output = output
        self.config = config
        self.models = models
        self.policy = policy
        self.router = router
        self.progress = progress
        self.q = EventQueue()
        self.sched_config = scheduler_config(policy, router.scheduler_config(SchedulerConfig(
            max_batched_tokens=config.max_batched_tokens, max_num_seqs=config.max_num_seqs,
            chunked_prefill=config.chunked_prefill, prefill_priority=config.prefill_priority,
            watermark=models.watermark)))
        self._aging = self.sched_config.queue_order != "fcfs"
        self._place = type(router).place is not Router.place
        self._hook_finish = type(router).observe_finish is not Router.observe_finish
        self.truth = truth
        self.belief = belief
        self.ttft_predicted: dict[int, float] = {}
        self.network = TransferNetwork(models.transfer_latency_s, models.transfer_bandwidth_Bps)
        nan = math.nan
        self.first_s = [nan] * n
        self.finish_s = [nan] * n
        self.state = [int(RequestState.WAITING)] * n
        self.prefill_of = [-1] * n
        self.decode_of = [-1] * n
        self.reason: dict[int, str] = {}
        self.transfers: dict[int, tuple[int, int]] = {}  # request -> (source, destination)
        self.life = SimLifecycle(config, self.sched_config, models.kv_blocks, self.q, self)
        self.instances = self.life.instances
        self.migrating = self.life.migrating
        self.prefill_targets: list[SimInstance] = []
        self.decode_targets: list[SimInstance] = []
        self.whole: list[SimInstance] | None = None
        self.local = False
        self.unrouted: deque[int] = deque()
        self.unplaced: deque[tuple[int, int]] = deque()
        self.arrived = 0
        self.done = 0
        self._idle_since = math.inf
        self.kv_bytes_moved = 0.0
        self.max_kv_tokens = (models.kv_blocks - models.watermark_blocks) * config.block_size
        self._progress_step = max(1, n // 100)
        self._next_progress = self._progress_step
        base = ClusterPolicy
        self._hook_arrival = type(policy).on_arrival is not base.on_arrival
        self._hook_done = type(policy).on_request_done is not base.on_request_done
        self.tick_s = config.tick_s if policy.tick_s is None else policy.tick_s
        require(self.tick_s > 0, f"policy {policy.name} has a tick of {self.tick_s} s")
        self.recorder = TimelineRecorder(config.timeline_s)

    # ------------------------------------------------------------------ instances
    def apply(self, action: Action) -> None:
        """Carry out one policy action (:meth:`SimLifecycle.apply`)."""
        self.life.apply(action)

    def refresh_targets(self) -> None:
        """Rebuild the placement candidates, then place work that was waiting for one."""
        pools = placement_pools(self.instances)
        self.prefill_targets = pools.prefill
        self.decode_targets = pools.decode
        self.whole = pools.whole
        self.local = pools.how == Whole.LOCAL
        while self.unrouted and (self.prefill_targets or self.whole):
            self.route_prefill(self.unrouted.popleft())
        while self.unplaced and self.decode_targets:
            self.route_decode(*self.unplaced.popleft())

    def start(self, inst: SimInstance) -> None:
        """Start the instance's next step or decode run if it is idle and may work."""
        if inst.busy or inst.state not in (InstanceState.ACTIVE, InstanceState.DRAINING):
            return
        if self._aging:
            inst.sched.age(self.q.now)
        end = inst.next_work(self.q.now, _MAX_RUN, self.truth)
        if end is not None:
            self.q.push(end, Kind.STEP, inst.instance_id, inst.version)

    def poke(self, inst: SimInstance) -> None:
        """New work for ``inst``: start it if idle, or cut its decode run to let the work join."""
        if not inst.busy:
            self.start(inst)
        elif inst.run is not None:
            end = inst.cut_run(self.q.now, self.truth)
            if end is not None:
                self.q.push(end, Kind.STEP, inst.instance_id, inst.version)

    # ------------------------------------------------------------------ request flow
    def on_arrival(self, i: int, _: int) -> None:
        self.arrived = i + 1
        if i + 1 < self.n:
            self.q.push(self.arrival_s[i + 1], Kind.ARRIVAL, i + 1)
        p, o = self.prompt[i], self.output[i]
        if self._hook_arrival:
            self.policy.on_arrival(self.q.now, i, p, o)
        if p + o - 1 > self.max_kv_tokens:
            self.end_request(i, _REJECTED, f"needs KV for {p + o - 1} tokens, an instance holds "
                                           f"{self.max_kv_tokens}")
            return
        self.route_prefill(i, True)

    def route_prefill(self, i: int, admit: bool = False) -> None:
        """Send request ``i`` to an instance for prefill; ``admit``: it is arriving (the router
        may reject it)."""
        targets = self.prefill_targets
        whole = self.whole
        if not targets and whole is None:
            self.unrouted.append(i)
            return
        p, o = self.prompt[i], self.output[i]
        now = self.q.now
        local = False
        if whole is not None:  # one kind of instance only: it serves the request whole
            inst = self.router.select_prefill(now, p, o, whole)
            local = self.local
        elif self._place:
            placement = self.router.place(now, p, o, targets, self.decode_targets, admit)
            if placement.reject:
                self.end_request(i, _REJECTED, placement.reject)
                return
            inst = placement.instance
            assert isinstance(inst, SimInstance)
            if placement.predicted_ttft_s == placement.predicted_ttft_s:  # not NaN
                self.ttft_predicted[i] = placement.predicted_ttft_s
        else:
            inst = self.router.select_prefill(now, p, o, targets)
        self.prefill_of[i] = inst.instance_id
        inst.sched.add_request(i, p, o, now, local)
        if not inst.busy:
            self.start(inst)
        elif inst.run is not None and inst.sched.has_prefill_work():
            self.poke(inst)

    def on_step(self, index: int, version: int) -> None:
        inst = self.instances[index]
        if version != inst.version or not inst.busy:
            return  # superseded by a cut
        out = inst.finish_work(self.truth)
        now = self.q.now
        p_new, p_attn, p_count, d_count, d_ctx, steps, seconds = inst.observed
        if steps:
            self.belief.observe_step(now, index, p_new, p_attn, p_count, d_count, d_ctx, steps,
                                     seconds)
        if out.first_token and (inst.sched.role != Role.PREFILL
                                or len(out.first_token) != len(out.prefilled)):
            first, dec = self.first_s, self.decode_of
            handed = set(out.prefilled)
            for rid in out.first_token:
                if rid not in handed:  # decoded here (on a PREFILL instance: ``local``)
                    first[rid] = now
                    dec[rid] = index
        for rid in out.prefilled:
            self.route_decode(rid, index)
        for rid, _ in out.finished:
            self.end_request(rid, _FINISHED)
        if inst.pending:
            self.try_reserve(inst)
        if inst.migrate and inst.state == InstanceState.DRAINING:
            self.life.migrate_decodes(inst)
        self.start(inst)
        if inst.state == InstanceState.DRAINING:
            self.life.check_drain(inst)

    def reroute_prompt(self, rid: int) -> None:
        """Place ``rid`` again (taken off a draining instance before its prefill started)."""
        self.prefill_of[rid] = -1
        self.route_prefill(rid)

    def route_decode(self, rid: int, source: int) -> None:
        """Hand a prefilled request to a decode instance's queue."""
        targets = self.decode_targets
        if not targets:
            self.unplaced.append((rid, source))
            return
        p = self.prompt[rid] + self.migrating.get(rid, 1) - 1
        inst = self.router.select_decode(self.q.now, p, self.output[rid], targets)
        inst.pending.push((rid, source), p)
        self.try_reserve(inst)

    def try_reserve(self, inst: SimInstance) -> None:
        """Reserve KV for queued hand-offs in order while memory allows
        (:meth:`~dopd.control.flow.requests.HandoffQueue.admit`), then start their transfers:
        the memory first, then the bytes. Requests the instance preempted get memory first."""
        if not inst.pending:
            return
        sched = inst.sched
        prompt, output, migrating = self.prompt, self.output, self.migrating

        def reserve(item: tuple[int, int]) -> bool:
            rid = item[0]
            return sched.reserve_remote(rid, prompt[rid], migrating.get(rid, 1), output[rid])

        per_token = self.models.kv_bytes_per_token
        now = self.q.now
        for rid, source in inst.pending.admit(reserve, sched.has_preempted_waiting()):
            kv_tokens = prompt[rid] + migrating.get(rid, 1) - 1
            inst.incoming += 1
            self.transfers[rid] = (source, inst.instance_id)
            nbytes = kv_tokens * per_token
            self.kv_bytes_moved += nbytes
            nxt = self.network.start(now, source, rid, nbytes)
            if nxt is not None:
                self.q.push(nxt[0], Kind.LINK, source, nxt[1])

    def on_link(self, source: int, version: int) -> None:
        res = self.network.complete(self.q.now, source, version)
        if res is None:
            return
        done, nxt = res
        if nxt is not None:
            self.q.push(nxt[0], Kind.LINK, source, nxt[1])
        latency = self.network.latency_s
        for rid in done:
            if latency > 0:
                self.q.push(self.q.now + latency, Kind.KV, rid)
            else:
                self.on_kv(rid, 0)

    def on_kv(self, rid: int, _: int) -> None:
        source, dest = self.transfers.pop(rid)
        src = self.instances[source]
        src.sched.release(rid)
        if not src.busy:
            self.start(src)
        if src.state == InstanceState.DRAINING:
            self.life.check_drain(src)
        inst = self.instances[dest]
        inst.incoming -= 1
        inst.sched.admit_remote(rid)
        if self.migrating.pop(rid, 0) == 0:
            self.first_s[rid] = self.q.now
        self.decode_of[rid] = dest
        self.poke(inst)

    def end_request(self, rid: int, state: int, reason: str = "") -> None:
        now = self.q.now
        self.state[rid] = state
        predicted = self.ttft_predicted.pop(rid, None) if self.ttft_predicted else None
        if state == _FINISHED:
            self.finish_s[rid] = now
            if self._hook_finish:
                self.router.observe_finish(now, self.prompt[rid], self.output[rid])
            if self.first_s[rid] != self.first_s[rid]:  # NaN: a one-token output
                self.first_s[rid] = now
                if self.decode_of[rid] < 0:
                    self.decode_of[rid] = self.prefill_of[rid]
            if predicted is not None:
                self.belief.observe_ttft(now, predicted, self.first_s[rid] - self.arrival_s[rid])
        else:
            self.reason[rid] = reason
        self.done += 1
        if self._hook_done:
            self.policy.on_request_done(now, self.outcome(rid))
        if self.done >= self._next_progress and self.progress is not None:
            self._next_progress += self._progress_step
            self.progress(self.done / self.n)

    def outcome(self, rid: int) -> RequestOutcome:
        first, finish = self.first_s[rid], self.finish_s[rid]
        return RequestOutcome(
            rid, self.arrival_s[rid], self.prompt[rid], self.output[rid],
            RequestState(self.state[rid]),
            None if math.isnan(first) else first, None if math.isnan(finish) else finish,
            self.reason.get(rid, ""),
            None if self.prefill_of[rid] < 0 else self.prefill_of[rid],
            None if self.decode_of[rid] < 0 else self.decode_of[rid])

    # ------------------------------------------------------------------ event loop
    def run(self) -> None:
        """Process events until none is left; stranded requests end as aborted."""
        q = self.q
        handlers = (self.on_step, self.on_link, self.on_kv, self.life.on_state,
                    self.on_arrival, self.on_tick)
        if self.n:
            q.push(self.arrival_s[0], Kind.ARRIVAL, 0)
        if self.policy.wants_ticks:
            q.push(self.tick_s, Kind.TICK)
        sample = self.sample
        next_sample = self.recorder.next_sample_s
        pop = q.pop
        while q:
            t, _, _, kind, a, b = pop()
            if t >= next_sample:
                next_sample = sample(t)
            handlers[kind](a, b)
        for rid in range(self.n):
            if self.state[rid] < _FINISHED:
                self.end_request(rid, _ABORTED, "stranded: no instance could serve it")
        self.belief.flush(q.now)

    def sample(self, t: float) -> float:
        """Record the timeline up to ``t``; returns the next sample time."""
        queued = sum(self.prompt[i] for i in self.unrouted) if self.unrouted else 0
        return self.recorder.sample(t, self.instances, queued)

    def view(self) -> ClusterView:
        """The policy's snapshot now (:func:`~dopd.control.flow.view.build_view`)."""
        return build_view(self.q.now, self.instances, self.config.instances, self.arrived,
                          self.done)

    def on_tick(self, _: int, __: int) -> None:

        now = self.q.now
        for action in self.policy.on_tick(now, self.view()):
            self.apply(action)
        if self.done >= self.n:
            return
        if self.q:
            self._idle_since = math.inf
        elif self._idle_since == math.inf:
            self._idle_since = now
        if now - self._idle_since < STALL_S:
            self.q.push(now + self.tick_s, Kind.TICK)

    def check(self) -> None:
        """Assert the end-of-run invariants (for tests): every request ended, no KV held
        anywhere, no hand-off or transfer left, block accounting consistent."""
        assert all(s >= _FINISHED for s in self.state), "a request did not end"
        assert not self.transfers and not self.unrouted and not self.unplaced
        for inst in self.instances:
            inst.sched.check()
            assert inst.drained and not inst.busy, f"instance {inst.instance_id} still has work"
            assert inst.sched.blocks.free_blocks == inst.sched.blocks.num_blocks
