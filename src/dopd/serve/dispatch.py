"""The request dispatcher of the front end: placement, P/D hand-off relay and request tracking.

:meth:`Dispatcher.submit` places a tokenized request: on a PREFILL instance when ACTIVE prefill
and decode instances exist (disaggregated; the decode instance is chosen when the prompt is done,
so it is the least loaded one at that time), else on the least-loaded MIXED (or DECODE) instance
(colocated). DRAINING, SWITCHING, STARTING and STOPPED instances get no new work. Worker events
become :class:`Event` values on the request's queue. When a prefill worker reports a prompt done
with a KV handle, the dispatcher sends ``accept`` to the chosen decode worker, which fetches the
KV from the prefill worker's KV server (peer to peer) or recomputes the prompt on a timeout.
On a worker crash, requests it held that produced no token yet are placed again (once); the
others fail with 503. Observers (metrics, the controller's policy) see arrivals and outcomes.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dopd.engine.model import SamplingParams
from dopd.serve.cluster import InstanceHandle
from dopd.serve.errors import ServeError
from dopd.serve.wire import params_to_wire
from dopd.types import InstanceState, RequestOutcome, RequestState, Role

MAX_RETRIES = 1


@functools.lru_cache(maxsize=1024)
def _wire_params(params: SamplingParams) -> dict[str, Any]:
    """The wire form of ``params``, shared by requests with equal parameters (read only)."""
    return params_to_wire(params)


@dataclass(frozen=True, slots=True)
class Event:
    """One item of a request's stream: ``kind`` is ``delta`` (tokens/text), ``done`` (finish
    reason), ``error`` (HTTP status and message) or ``disconnect`` (the HTTP layer's own: the
    client went away)."""

    kind: str
    token_ids: tuple[int, ...] = ()
    text: str = ""
    finish_reason: str | None = None
    status: int = 0
    message: str = ""


@dataclass(slots=True)
class Tracked:
    """A request in flight (mutable, front end only). ``t_http``, ``t_submit`` and ``t_event``
    (``time.perf_counter``, 0 when unknown) are when the request reached the app, when its
    submit was sent, and when its first token's event arrived from the worker."""

    rid: int
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    where: int | None = None
    phase: str = "colocated"
    prefill_iid: int | None = None
    decode_iid: int | None = None
    first_token_t: float | None = None
    finish_t: float | None = None
    n_out: int = 0
    retries: int = 0
    kv_bytes: int = 0
    recomputed: bool = False
    t_http: float = 0.0
    t_submit: float = 0.0
    t_event: float = 0.0


class Observer:
    """Hooks on request arrivals and outcomes (times on ``time.monotonic``)."""

    def on_arrival(self, t: Tracked) -> None: ...

    def on_done(self, t: Tracked, outcome: RequestOutcome) -> None: ...

    def on_kv(self, ok: bool, nbytes: int) -> None: ...

    def on_crash(self, iid: int, retried: int, failed: int) -> None: ...


class Dispatcher:
    """Places requests on ``instances`` and relays their events (see the module docstring).

    ``send(iid, msg)`` delivers a control command to an instance. Not thread-safe: used from
    the event loop only.
    """

    def __init__(self, instances: dict[int, InstanceHandle],
                 kv_address: Callable[[int], str]) -> None:
        self.instances = instances
        self.kv_address = kv_address
        self.tracked: dict[int, Tracked] = {}
        self.load: dict[int, int] = {}
        self.observers: list[Observer] = []
        self.admitting = True
        self._ids = itertools.count()
        self.role_waiters: dict[int, asyncio.Future[str]] = {}

    # ------------------------------------------------------------------ placement
    def _active(self, role: Role) -> list[int]:
        return [i for i, h in self.instances.items()
                if h.role == role and h.state == InstanceState.ACTIVE]

    def _least(self, ids: list[int]) -> int:
        return min(ids, key=lambda i: (self.load.get(i, 0), i))

    def _place(self, t: Tracked, iid: int | None) -> None:
        if t.where is not None:
            self.load[t.where] -= 1
        t.where = iid
        if iid is not None:
            self.load[iid] = self.load.get(iid, 0) + 1

    def route(self) -> tuple[str, int]:
        """(phase, instance) for a new request; ServeError 503 when nothing can take it."""
        prefill, decode = self._active(Role.PREFILL), self._active(Role.DECODE)
        mixed = self._active(Role.MIXED)
        if prefill and decode:
            p = self._least(prefill)
            if mixed:
                m = self._least(mixed)
                if self.load.get(m, 0) < self.load.get(p, 0):
                    return "colocated", m
            return "prefill", p
        if mixed or decode:
            return "colocated", self._least(mixed or decode)
        raise ServeError(503, "no instance can serve requests right now", code="unavailable")

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Tracked:
        """Track and place a request; its events arrive on ``queue``."""
        if not self.admitting:
            raise ServeError(503, "the server is shutting down", code="unavailable")
        t = Tracked(next(self._ids), prompt_ids, params, time.monotonic())
        self._send_submit(t)
        self.tracked[t.rid] = t
        for obs in self.observers:
            obs.on_arrival(t)
        return t

    def _send_submit(self, t: Tracked) -> None:
        phase, iid = self.route()
        t.phase = phase
        t.prefill_iid = iid if phase == "prefill" else None
        msg = {"op": "submit", "rid": t.rid, "ids": t.prompt_ids,
               "params": _wire_params(t.params)}
        if not self.instances[iid].send(msg):
            raise ServeError(503, f"instance {iid} is not reachable", code="unavailable")
        self._place(t, iid)

    def abort(self, rid: int, reason: str = "client gone") -> None:
        """Drop a request (client gone, shutdown): the instance holding it frees it, and
        observers see it ABORTED."""
        t = self.tracked.pop(rid, None)
        if t is None:
            return
        if t.where is not None:
            self.instances[t.where].send({"op": "abort", "rid": rid})
        self._place(t, None)
        self._report(t, RequestState.ABORTED, reason)

    # ------------------------------------------------------------------ worker events
    def on_event(self, iid: int, ev: dict[str, Any]) -> None:
        kind = ev.get("ev")
        if kind == "out":
            for item in ev["items"]:
                self._on_output(iid, *item)
        elif kind == "error":
            t = self.tracked.get(ev.get("rid", -1))
            if t is not None:
                status = 400 if t.phase != "decode" else 503
                self._fail(t, status, str(ev.get("msg", "worker error")))
        elif kind == "kv":
            t = self.tracked.get(ev["rid"])
            if t is not None:
                t.kv_bytes += int(ev["bytes"])
                t.recomputed = t.recomputed or not ev["ok"]
            for obs in self.observers:
                obs.on_kv(bool(ev["ok"]), int(ev["bytes"]))
        elif kind == "role":
            waiter = self.role_waiters.pop(iid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(str(ev["role"]))

    def _on_output(self, iid: int, rid: int, ids: list[int], text: str, n_prompt: int,
                   n_out: int, finished: bool, reason: str | None,
                   handle: dict[str, Any] | None) -> None:
        t = self.tracked.get(rid)
        if t is None or t.where != iid:
            return
        now = time.monotonic()
        if ids and t.first_token_t is None:
            t.first_token_t = now
            t.t_event = time.perf_counter()
        t.n_out = n_out
        if ids or text:
            t.queue.put_nowait(Event("delta", tuple(ids), text))
        if handle is not None:
            self._hand_off(t, iid, handle)
        elif finished:
            t.finish_t = now
            self._place(t, None)
            del self.tracked[rid]
            t.queue.put_nowait(Event("done", finish_reason=reason))
            self._report(t, RequestState.FINISHED, reason or "")

    def _hand_off(self, t: Tracked, src: int, handle: dict[str, Any]) -> None:
        decode = self._active(Role.DECODE) or self._active(Role.MIXED)
        if not decode:
            self.instances[src].send({"op": "abort", "rid": t.rid})
            self._fail(t, 503, "no decode instance to continue the request")
            return
        d = self._least(decode)
        t.phase = "decode"
        t.decode_iid = d
        msg = {"op": "accept", "rid": t.rid, "handle": handle, "src": self.kv_address(src)}
        if not self.instances[d].send(msg):
            self.instances[src].send({"op": "abort", "rid": t.rid})
            self._fail(t, 503, f"decode instance {d} is not reachable")
            return
        self._place(t, d)

    def _fail(self, t: Tracked, status: int, message: str) -> None:
        if self.tracked.pop(t.rid, None) is None:
            return
        if t.where is not None:
            self.instances[t.where].send({"op": "abort", "rid": t.rid})
        self._place(t, None)
        t.queue.put_nowait(Event("error", status=status, message=message))
        self._report(t, RequestState.ABORTED, message)

    def _report(self, t: Tracked, state: RequestState, reason: str) -> None:
        outcome = RequestOutcome(t.rid, t.arrival, len(t.prompt_ids), t.n_out, state,
                                 t.first_token_t, t.finish_t, reason, t.prefill_iid,
                                 t.decode_iid if t.phase == "decode" else t.where)
        for obs in self.observers:
            obs.on_done(t, outcome)

    # ------------------------------------------------------------------ crashes, draining
    def on_crash(self, iid: int) -> None:
        """Instance ``iid`` died: retry its requests that produced no token, fail the rest."""
        retried = failed = 0
        for t in [t for t in self.tracked.values() if t.where == iid]:
            self._place(t, None)
            if t.n_out == 0 and t.retries < MAX_RETRIES:
                t.retries += 1
                try:
                    self._send_submit(t)
                    retried += 1
                    continue
                except ServeError:
                    pass
            failed += 1
            self._fail(t, 503, f"instance {iid} failed while serving the request")
        for obs in self.observers:
            obs.on_crash(iid, retried, failed)

    def holding(self, iid: int) -> int:
        """Requests of the front end currently placed on ``iid``."""
        return self.load.get(iid, 0)

    def expect_role(self, iid: int) -> asyncio.Future[str]:
        """A future resolved when ``iid`` confirms a role change."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.role_waiters[iid] = fut
        return fut
