"""The request dispatcher of the front end: placement, P/D hand-off relay and request tracking.

Placement is the simulator's router (:mod:`dopd.control.routing.router`, reading each instance
through the front end's :class:`~dopd.serve.live_routing.InstanceBook`) among the candidates of
the shared request flow (:func:`~dopd.control.flow.requests.placement_pools`).
:meth:`Dispatcher.submit` asks it where a tokenized request goes: a PREFILL instance
(disaggregated; the decode instance is chosen by the router when the prompt is done, with the
loads of that time), a MIXED instance, or a DECODE instance that prefills it itself
(colocated); or it rejects the request (admission control: HTTP 429). With DECODE instances
alone, one of them serves the request colocated; with PREFILL instances alone (every decode
instance down), one of them serves the whole request (``local``: no hand-off) rather than
refusing it. DRAINING, SWITCHING, STARTING and STOPPED instances get no new work; a drain
(:meth:`Dispatcher.drain`) places the instance's prompts that have not started elsewhere, as
the simulator does (:data:`~dopd.control.flow.instances.REROUTE_UNSTARTED`). Every policy's
admission is bounded
(:class:`~dopd.serve.admission.AdmissionLimits`): past the limits a new request gets 429 with
``Retry-After``. Worker events
become :class:`Event` values on the request's queue. When a prefill worker reports a prompt done
with a KV handle, the dispatcher sends ``accept`` to the chosen decode worker, which fetches the
KV from the prefill worker's KV server (peer to peer) or recomputes the prompt on a timeout.
When a worker is lost (crashed, or stalled: see :mod:`dopd.serve.cluster`) the requests it
held are suspects: one crash does not say which request of the batch caused it. Suspects are
placed again one at a time (a request that already streamed tokens resumes: its prompt and the
tokens so far are prefilled again and it goes on from there), each on probation until it
produced a token on its new instance. The request on probation when its instance is lost again
is poison (its second loss) and fails alone with HTTP 500, as does one in ``POISON_LOSSES``
losses: one bad request takes at most two workers down, the innocent requests of its batch
finish elsewhere, and an identical request later fails at once. Decode instances fetching KV
from a lost prefill instance recompute the prompt at once. Observers (metrics, the controller's
policy) see arrivals and outcomes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import time
from collections import deque
from collections.abc import Callable

from dopd.control.flow.instances import REROUTE_UNSTARTED
from dopd.control.flow.requests import Pools, Whole, placement_pools
from dopd.control.routing.router import Router
from dopd.engine.model import SamplingParams
from dopd.engine.sequence import SchedulerConfig
from dopd.serve.admission import AdmissionLimits, FinishRate, clamp_retry_after
from dopd.serve.cluster import InstanceHandle
from dopd.serve.errors import ServeError
from dopd.serve.in_flight import Event, Leg, Observer, Rejected, Tracked
from dopd.serve.live_routing import InstanceBook, live_router, routables
from dopd.serve.messages import (
    Abort,
    Accept,
    Handoff,
    KVLost,
    KVNotice,
    Output,
    RoleChanged,
    Submit,
    WorkerError,
)
from dopd.serve.messages import (
    Event as WorkerEvent,
)
from dopd.serve.serve_config import ServeConfig
from dopd.types import RequestOutcome, RequestState, Role

POISON_LOSSES = 3
"""A request in this many worker losses is poison even when it passed its probations."""
SUSPECT_WAIT_S = 60.0
"""The longest a suspect waits for an instance to take it before it fails (503)."""
NO_INSTANCE_RETRY_S = 5
POISON_MEMORY = 1024
"""Poison requests remembered (prompt and parameters): an identical one fails at once."""


def _print(prompt_ids: list[int], params: SamplingParams) -> int:
    """A request's fingerprint: its prompt and sampling parameters but the length."""
    return hash((tuple(prompt_ids), dataclasses.replace(params, max_tokens=1)))


class Dispatcher:
    """Places requests on ``instances`` with ``router`` and relays their events (see the module
    docstring). ``router`` None: ``least-loaded`` on the default deployment's latency model.
    ``kv_address(iid)`` is an instance's KV server address. ``limits`` bound admission.
    Not thread-safe: used from the event loop only.
    """

    def __init__(self, instances: dict[int, InstanceHandle],
                 kv_address: Callable[[int], str], router: Router | None = None) -> None:
        self.instances = instances
        self.kv_address = kv_address
        self.router = router if router is not None else live_router(ServeConfig())
        order = self.router.scheduler_config(SchedulerConfig())
        self.queue_order, self._aging_s = order.queue_order, order.aging_s
        self._max_passes = order.max_passes
        self.books: dict[int, InstanceBook] = {}
        self.tracked: dict[int, Tracked] = {}
        self.load: dict[int, int] = {}
        self.tokens: dict[int, int] = {}
        self.limits = AdmissionLimits(instances=max(1, len(instances)))
        self.finishes = FinishRate()
        self.overloaded = 0
        self.poisoned = 0
        self.poison_prints: dict[int, None] = {}  # insertion-ordered, bounded
        self.suspects: deque[Tracked] = deque()
        self.probation: Tracked | None = None
        self.observers: list[Observer] = []
        self.admitting = True
        self.rejected = 0
        self.moved = 0

        self._ids = itertools.count()
        self.role_waiters: dict[int, asyncio.Future[str]] = {}

    # ------------------------------------------------------------------ placement
    def book(self, iid: int) -> InstanceBook:
        """The front end's account of instance ``iid`` (a new one for a new handle)."""
        handle = self.instances[iid]
        b = self.books.get(iid)
        if b is None or b.handle is not handle:
            b = self.books[iid] = InstanceBook(handle, self.router.context.block_size,
                                               self.queue_order, self._aging_s,
                                               self._max_passes)
        b.refresh()
        return b

    def _candidates(self, now: float) -> Pools[InstanceBook]:
        """The placement candidates (:func:`~dopd.control.flow.requests.placement_pools`) as
        the books the router reads."""
        pools = placement_pools(self.instances.values())
        books: dict[int, InstanceBook] = {}

        def of(hs: list[InstanceHandle]) -> list[InstanceBook]:
            out = []
            for h in hs:
                b = books.get(h.instance_id)
                if b is None:
                    b = books[h.instance_id] = self.book(h.instance_id)
                    b.set_now(now)
                out.append(b)
            return out

        return Pools(of(pools.prefill), of(pools.decode),
                     None if pools.whole is None else of(pools.whole), pools.how)

    def _place(self, t: Tracked, iid: int | None) -> None:
        if t.where is not None:
            self.load[t.where] -= 1
            self.tokens[t.where] -= t.cost
            book = self.books.get(t.where)
            if book is not None:
                book.drop(t.rid)
        t.where = iid
        if iid is not None:
            t.served_by = iid
            self.load[iid] = self.load.get(iid, 0) + 1
            self.tokens[iid] = self.tokens.get(iid, 0) + t.cost

    def _has_room(self, iid: int, prompt: int) -> bool:
        return self.limits.instance_room(self.load.get(iid, 0), self.tokens.get(iid, 0), prompt)

    def _overloaded(self, what: str) -> ServeError:
        self.overloaded += 1
        behind = max(1, len(self.tracked) - self.limits.max_requests + 1)
        return ServeError(429, f"the server is overloaded ({what}); retry later",
                          code="overloaded", retry_after=self.finishes.retry_after(behind))

    def route(self, t: Tracked, p: int, m: int, admit: bool = False) -> tuple[Leg, int]:
        """(leg, instance) for request ``t`` (a prompt of ``p`` tokens, ``m`` to generate)
        by the router; ``admit``: it is arriving (the admission limits apply, and the router
        may reject it: :class:`Rejected`). ``Leg.LOCAL``: a PREFILL instance serves it whole.
        ServeError 503 when nothing can take it, 429 past the admission limits."""
        now = time.monotonic()
        pools = self._candidates(now)
        if pools.empty:
            raise ServeError(503, "no instance can serve requests right now", code="unavailable",
                             retry_after=NO_INSTANCE_RETRY_S)
        prefill, decode, pool = pools.prefill, pools.decode, pools.whole
        phase = Leg.LOCAL if pools.how == Whole.LOCAL else Leg.COLOCATED
        if admit:
            if not self.limits.cluster_room(len(self.tracked), sum(self.tokens.values()), p):
                raise self._overloaded("cluster queue limit")
            if pool is not None:
                pool = [b for b in pool if self._has_room(b.instance_id, p)]
            else:
                prefill = [b for b in prefill if self._has_room(b.instance_id, p)]
            if not (pool if pool is not None else prefill):
                raise self._overloaded("every instance is at its queue limit")
        if pool is not None:  # one kind of instance only: it serves the request whole
            return phase, self.router.select_prefill(now, p, m, routables(pool)).instance_id
        placement = self.router.place(now, p, m, routables(prefill), routables(decode), admit)
        if placement.reject:
            raise Rejected(placement.reject, clamp_retry_after(placement.predicted_ttft_s))
        predicted = placement.predicted_ttft_s
        t.predicted_ttft_s = predicted if math.isfinite(predicted) else None
        inst = placement.instance
        assert isinstance(inst, InstanceBook)
        phase = Leg.PREFILL if inst.role == Role.PREFILL else Leg.COLOCATED
        return phase, inst.instance_id

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Tracked:
        """Track and place a request; its events arrive on ``queue``. ServeError 429 when
        admission control rejects it (observers see it arrive and end REJECTED)."""
        if not self.admitting:
            raise ServeError(503, "the server is shutting down", code="unavailable")
        if self.poison_prints and _print(prompt_ids, params) in self.poison_prints:
            self.poisoned += 1
            raise ServeError(500, "an identical request made two instances fail; it is not "
                             "served", code="poison_request")
        t = Tracked(next(self._ids), prompt_ids, params, time.monotonic())
        try:
            self._send_submit(t, admit=True)
        except Rejected as exc:
            self.rejected += 1
            for obs in self.observers:
                obs.on_arrival(t)
            self._report(t, RequestState.REJECTED, str(exc))
            raise ServeError(429, f"request rejected by {exc}", code="admission_control",
                             retry_after=exc.retry_after) from None
        self.tracked[t.rid] = t
        for obs in self.observers:
            obs.on_arrival(t)
        return t

    def _send_submit(self, t: Tracked, admit: bool = False) -> None:
        """Place ``t`` and send it; a request that streamed tokens already resumes (its prompt
        and those tokens prefilled again, the rest of its budget to go)."""
        ids, params = t.prompt_ids, t.params
        if t.out_ids:
            ids = t.prompt_ids + t.out_ids
            params = dataclasses.replace(params, max_tokens=params.max_tokens - len(t.out_ids))
        phase, iid = self.route(t, len(ids), params.max_tokens, admit)
        local = phase == Leg.LOCAL
        t.phase = Leg.COLOCATED if local else phase
        t.prefill_iid = iid if phase == Leg.PREFILL else None
        if not self.instances[iid].send(Submit(t.rid, tuple(ids), params, local)):
            raise ServeError(503, f"instance {iid} is not reachable", code="unavailable",
                             retry_after=NO_INSTANCE_RETRY_S)
        t.n_base = len(t.out_ids)
        t.cost = len(ids)
        self._place(t, iid)
        self.book(iid).queue(t.rid, len(ids), params.max_tokens, t.arrival)

    def abort(self, rid: int, reason: str = "client gone") -> None:
        """Drop a request (client gone, shutdown): the instance holding it frees it, and
        observers see it ABORTED."""
        t = self.tracked.pop(rid, None)
        if t is None:
            return
        if t.where is not None:
            self.instances[t.where].send(Abort(rid))
        self._place(t, None)
        self._report(t, RequestState.ABORTED, reason)

    # ------------------------------------------------------------------ worker events
    def on_event(self, iid: int, ev: WorkerEvent) -> None:
        if isinstance(ev, Output):
            for item in ev.items:
                self._on_output(iid, item.rid, item.token_ids, item.text, item.num_prompt_tokens,
                                item.num_output_tokens, item.finished, item.finish_reason,
                                item.handoff)
        elif isinstance(ev, WorkerError):
            t = self.tracked.get(ev.rid if ev.rid is not None else -1)
            if t is not None:
                status = ev.status or (400 if t.phase != Leg.DECODE else 503)
                self._fail(t, status, ev.msg or "worker error")
        elif isinstance(ev, KVNotice):
            t = self.tracked.get(ev.rid)
            if t is not None:
                t.kv_bytes += ev.nbytes
                t.recomputed = t.recomputed or not ev.ok
                self._handed_over(t)
                if t.where == iid:  # the KV is in (or being recomputed): it decodes there
                    self._release_first(t)
                    self.book(iid).decoding(t.rid, len(t.prompt_ids) + max(t.n_out, 1))
            for obs in self.observers:
                obs.on_kv(ev.ok, ev.nbytes)
        elif isinstance(ev, RoleChanged):
            waiter = self.role_waiters.pop(iid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(str(ev.role))

    def _on_output(self, iid: int, rid: int, ids: tuple[int, ...], text: str, n_prompt: int,
                   n_out: int, finished: bool, reason: str | None,
                   handle: Handoff | None) -> None:
        t = self.tracked.get(rid)
        if t is None or t.where != iid:
            return
        now = time.monotonic()
        if t.held_first is not None:
            self._release_first(t)
        # a hand-off's first token counts when its KV reaches the decode instance
        hold = handle is not None and not t.out_ids
        if ids:
            if t.first_token_t is None and not hold:
                t.first_token_t = now
                t.t_event = time.perf_counter()
            t.out_ids.extend(ids)
            if t is self.probation:  # it produced a token on its new instance: cleared
                self.probation = None
                self.pump()
        n_out += t.n_base
        t.n_out = n_out
        if ids or text:
            event = Event("delta", tuple(ids), text)
            if hold:
                t.held_first = event
            else:
                t.queue.put_nowait(event)
        if handle is not None:
            self.book(iid).held(rid)
            self._hand_off(t, iid, handle)
        elif finished:
            self._finish(t, now, reason)
        elif n_out:
            if t.phase == Leg.DECODE:
                self._handed_over(t)
            self.book(iid).decoding(rid, len(t.prompt_ids) + n_out)

    def _release_first(self, t: Tracked) -> None:
        """Stream ``t``'s held first token now (its KV is in, or the hand-off was given up)."""
        event, t.held_first = t.held_first, None
        if event is not None:
            if t.first_token_t is None:
                t.first_token_t = time.monotonic()
                t.t_event = time.perf_counter()
            t.queue.put_nowait(event)

    def _finish(self, t: Tracked, now: float, reason: str | None) -> None:
        self._release_first(t)
        t.finish_t = now
        self._place(t, None)
        del self.tracked[t.rid]
        self.finishes.finished(now)
        t.queue.put_nowait(Event("done", finish_reason=reason))
        self._report(t, RequestState.FINISHED, reason or "")
        self.router.observe_finish(now, len(t.prompt_ids), t.n_out)

    def _handed_over(self, t: Tracked) -> None:
        """``t``'s KV reached its decode instance (or was recomputed there, or ``t`` ended):
        its prefill instance no longer holds it."""
        if t.prefill_iid is not None and t.prefill_iid in self.books:
            self.books[t.prefill_iid].release(t.rid)

    def _hand_off(self, t: Tracked, src: int, handle: Handoff) -> None:
        now = time.monotonic()
        decode = self._candidates(now).decode
        if not decode:  # every decode instance is down: serve the rest on a prefill one
            self._release_first(t)
            self.instances[src].send(Abort(t.rid))
            self._place(t, None)
            try:
                self._send_submit(t)
            except ServeError as exc:
                self._fail(t, exc.status, "no instance to continue the request")
            return
        p, m = len(t.prompt_ids), t.params.max_tokens
        d = self.router.select_decode(now, p, m, routables(decode)).instance_id
        t.phase = Leg.DECODE
        t.decode_iid = d
        if not self.instances[d].send(Accept(t.rid, handle, self.kv_address(src))):
            self.instances[src].send(Abort(t.rid))
            self._fail(t, 503, f"decode instance {d} is not reachable")
            return
        self._place(t, d)
        self.book(d).expect(t.rid, p, m)

    def _fail(self, t: Tracked, status: int, message: str,
              retry_after: int | None = None) -> None:
        if self.tracked.pop(t.rid, None) is None:
            return
        if t.where is not None:
            self.instances[t.where].send(Abort(t.rid))
        self._place(t, None)
        t.queue.put_nowait(Event("error", status=status, message=message,
                                 retry_after=retry_after))
        self._report(t, RequestState.ABORTED, message)

    def _report(self, t: Tracked, state: RequestState, reason: str) -> None:
        self._handed_over(t)
        outcome = RequestOutcome(t.rid, t.arrival, len(t.prompt_ids), t.n_out, state,
                                 t.first_token_t, t.finish_t, reason, t.prefill_iid,
                                 t.decode_iid if t.phase == Leg.DECODE else t.served_by,
                                 t.predicted_ttft_s)
        for obs in self.observers:
            obs.on_done(t, outcome)

    # ------------------------------------------------------------------ crashes, draining
    def on_crash(self, iid: int) -> None:
        """Instance ``iid`` was lost (crashed or stalled): its requests become suspects, placed
        again one at a time (:meth:`pump`); one already in a loss is poison and fails (500).
        Decode instances waiting for KV from ``iid`` recompute it now."""
        retried = failed = 0
        book = self.books.pop(iid, None)
        if book is not None:
            book.clear()
        now = time.monotonic()
        probation = self.probation
        for t in list(self.tracked.values()):
            if t.where != iid:
                if t.phase == Leg.DECODE and t.prefill_iid == iid and t.where is not None:
                    self.instances[t.where].send(KVLost(t.rid))
                continue
            self._release_first(t)
            self._place(t, None)
            t.losses += 1
            if t is self.probation:
                self.probation = None
            if t.n_out >= t.params.max_tokens:  # nothing left to generate: it is done
                self._finish(t, now, "length")
                continue
            if t is probation or t.losses >= POISON_LOSSES:
                failed += 1
                self.poisoned += 1
                self.poison_prints[_print(t.prompt_ids, t.params)] = None
                if len(self.poison_prints) > POISON_MEMORY:
                    del self.poison_prints[next(iter(self.poison_prints))]
                self._fail(t, 500, f"the request was on {t.losses} instances that failed "
                           f"while serving it (last: instance {iid}); it is not retried")
                continue
            retried += 1
            t.retries += 1
            t.suspect_since = now
            self.suspects.append(t)
        self.pump()
        for obs in self.observers:
            obs.on_crash(iid, retried, failed)

    def pump(self) -> None:
        """Place the next suspect when none is on probation (called on every turn of the
        cluster's watch, and when a probation ends); a suspect that waited longer than
        ``SUSPECT_WAIT_S`` for an instance fails with 503."""
        if self.probation is not None:
            if self.probation.rid in self.tracked:
                return
            self.probation = None
        now = time.monotonic()
        while self.suspects:
            t = self.suspects[0]
            if t.rid not in self.tracked or t.where is not None:
                self.suspects.popleft()
                continue
            try:
                self._send_submit(t)
            except ServeError as exc:
                if now - t.suspect_since > SUSPECT_WAIT_S:
                    self.suspects.popleft()
                    self._fail(t, exc.status, f"no instance could take the request again: "
                               f"{exc.message}", exc.retry_after or NO_INSTANCE_RETRY_S)
                    continue
                return  # nothing can take it now: try again on the next turn
            self.suspects.popleft()
            self.probation = t
            return

    def drain(self, iid: int, migrate: bool = False) -> None:
        """Instance ``iid`` drains (it gets no new work any more): place its prompts that have
        not started elsewhere (:data:`~dopd.control.flow.instances.REROUTE_UNSTARTED`), and
        with ``migrate`` its decodes too (resumed elsewhere: their prompt and tokens so far
        prefilled again, the KV transport having no export of a running decode). A request no
        other instance can take now stays. The front end cannot see whether a prompt's
        prefill has begun: every prompt without a first token counts as not started."""
        pools = self._candidates(time.monotonic())
        if not any(b.instance_id != iid for b in (*pools.prefill, *pools.decode)):
            return  # nowhere else to go: everything finishes here
        moved = []
        for t in list(self.tracked.values()):
            if t.where != iid or t is self.probation:
                continue
            unstarted = t.first_token_t is None and not t.out_ids and t.phase != Leg.DECODE
            if (REROUTE_UNSTARTED and unstarted) or (migrate and not unstarted):
                moved.append(t)
        for t in moved:
            # the abort reaches the worker before a submit of the same request would
            self.instances[iid].send(Abort(t.rid))
            self._handed_over(t)
            self._place(t, None)
            try:
                self._send_submit(t)
            except (ServeError, Rejected) as exc:
                self._fail(t, 503, f"the request could not be moved off draining instance "
                           f"{iid}: {exc}")
                continue
            self.moved += 1

    def holding(self, iid: int) -> int:
        """Requests of the front end currently placed on ``iid``."""
        return self.load.get(iid, 0)

    def expect_role(self, iid: int) -> asyncio.Future[str]:
        """A future resolved when ``iid`` confirms a role change."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.role_waiters[iid] = fut
        return fut
