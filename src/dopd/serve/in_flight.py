"""A request in flight at the front end: its record (:class:`Tracked`), the items of its
stream (:class:`Event`), which leg of its path it is on (:class:`Leg`), the observers of
arrivals and outcomes, and the router's refusal (:class:`Rejected`). The dispatcher
(:mod:`dopd.serve.dispatch`) owns the records; the HTTP layer reads the stream."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum

from dopd.engine.model import SamplingParams
from dopd.types import RequestOutcome


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
    retry_after: int | None = None


class Leg(StrEnum):
    """Which part of its path a request in flight is on: served whole by one instance
    (``COLOCATED``; ``LOCAL``: whole on a prefill-only instance, a routing answer only), its
    prompt on a prefill instance (``PREFILL``), or its decode after the hand-off (``DECODE``)."""

    COLOCATED = "colocated"
    LOCAL = "local"
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(slots=True)
class Tracked:
    """A request in flight (mutable, front end only). ``t_http``, ``t_submit`` and ``t_event``
    (``time.perf_counter``, 0 when unknown) are when the request reached the app, when its
    submit was sent, and when its first token's event arrived from the worker. ``out_ids``
    are the tokens streamed so far, ``n_base`` how many of them its current instance did not
    produce (it resumed after a loss), ``losses`` the worker losses it was in, ``cost`` the
    prompt tokens charged to its instance, ``served_by`` the instance it was placed on last.
    ``predicted_ttft_s``: the router's predicted TTFT at placement (None: it predicted none).
    ``held_first``: the first token of a prefill-only instance, held until the KV reaches the
    decode instance (the request's first token counts then, as in the simulator)."""

    rid: int
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    where: int | None = None
    served_by: int | None = None
    phase: Leg = Leg.COLOCATED
    prefill_iid: int | None = None
    decode_iid: int | None = None
    first_token_t: float | None = None
    finish_t: float | None = None
    n_out: int = 0
    retries: int = 0
    losses: int = 0
    n_base: int = 0
    cost: int = 0
    out_ids: list[int] = field(default_factory=list)
    suspect_since: float = 0.0
    kv_bytes: int = 0
    recomputed: bool = False
    t_http: float = 0.0
    t_submit: float = 0.0
    t_event: float = 0.0
    predicted_ttft_s: float | None = None
    held_first: Event | None = None


class Observer:
    """Hooks on request arrivals and outcomes (times on ``time.monotonic``)."""

    def on_arrival(self, t: Tracked) -> None: ...

    def on_done(self, t: Tracked, outcome: RequestOutcome) -> None: ...

    def on_kv(self, ok: bool, nbytes: int) -> None: ...

    def on_crash(self, iid: int, retried: int, failed: int) -> None: ...


class Rejected(Exception):
    """The router's admission control refused a request; the message says why, ``retry_after``
    when to try again (seconds)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
