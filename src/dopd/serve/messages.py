"""Typed, versioned messages between the front end and the workers.

Every message that crosses the control channel (:mod:`dopd.serve.channels`) is one of the
frozen dataclasses below. Commands go from the front end to a worker (:data:`Command`), events
from a worker to the front end (:data:`Event`). On the wire a message is a msgpack map
``{"v": WIRE_VERSION, "k": <kind>, ...fields}`` (:func:`encode`); :func:`decode_command` and
:func:`decode_event` turn such a map back into its dataclass and raise :class:`WireError`, with
a message naming the problem, for another version, an unknown kind or a malformed field: a
worker answers that with an :class:`WorkerError` event, the front end counts and logs it.

Bump :data:`WIRE_VERSION` whenever a field is added, removed or changes meaning: both ends of
one deployment always run the same code, so a mismatch means a stray or stale peer, and it is
rejected rather than guessed at. The step samples riding on ``out``/``stats`` events keep their
own version (:mod:`dopd.serve.step_samples`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dopd.engine.kv_handoff import KVHandle
from dopd.engine.model import SamplingParams
from dopd.errors import DopdError
from dopd.serve.wire import handle_from_wire, handle_to_wire, params_from_wire, params_to_wire
from dopd.types import RequestState, Role

WIRE_VERSION = 2


class WireError(DopdError):
    """A control message of another version, of an unknown kind, or malformed."""


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """A worker's load and counters, as of its last event (zeros before the first one)."""

    role: str = ""
    waiting: int = 0
    prefilling: int = 0
    decode_batch: int = 0
    queued_prefill_tokens: int = 0
    decode_ctx_sum: int = 0
    pending_decodes: int = 0
    held: int = 0
    kv_used_blocks: int = 0
    kv_total_blocks: int = 0
    recent_step_s: float = 0.0
    steps: int = 0
    unfinished: int = 0
    kv_exports: int = 0
    kv_imports: int = 0
    kv_recomputes: int = 0
    lease_expiries: int = 0
    kv_bytes_sent: int = 0
    kv_bytes_received: int = 0
    kv_failures: int = 0
    busy_s: float = 0.0
    auth_denied: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The stats as a plain map (the HTTP status page's JSON)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, slots=True)
class Handoff:
    """A prefilled request's KV, offered for hand-off: the handle, and the transport's opaque
    reference to it when it moved out of the prefill engine (``ref``: a serialized Ray
    ``ObjectRef`` with the object-store transport; None: fetch it from the prefill worker)."""

    handle: KVHandle
    ref: bytes | None = None


# ---------------------------------------------------------------------- commands
@dataclass(frozen=True, slots=True)
class Submit:
    """Serve prompt ``ids`` as request ``rid``; ``local``: decode it here even on a prefill
    instance."""

    rid: int
    ids: tuple[int, ...]
    params: SamplingParams
    local: bool = False


@dataclass(frozen=True, slots=True)
class Accept:
    """Decode request ``rid``, prefilled elsewhere: its KV is fetched from the prefill worker
    whose KV socket is ``src`` (or through ``handoff.ref``)."""

    rid: int
    handoff: Handoff
    src: str


@dataclass(frozen=True, slots=True)
class Abort:
    """Drop request ``rid`` and free its KV."""

    rid: int


@dataclass(frozen=True, slots=True)
class KVLost:
    """The prefill instance of accepted request ``rid`` is gone: recompute its prompt now."""

    rid: int


@dataclass(frozen=True, slots=True)
class SetRole:
    """Serve as ``role`` from the next step (the front end drained the instance first)."""

    role: Role


@dataclass(frozen=True, slots=True)
class Stop:
    """End the worker loop."""


Command = Submit | Accept | Abort | KVLost | SetRole | Stop


# ---------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class Ready:
    """The worker is up: its KV socket, process id and context window."""

    kv_addr: str
    pid: int
    max_model_len: int
    stats: WorkerStats


@dataclass(frozen=True, slots=True)
class OutputItem:
    """One request's progress in one step: the new tokens and text, the counts so far, its
    state on this worker after the step, and its KV hand-off when its prompt is done here."""

    rid: int
    token_ids: tuple[int, ...]
    text: str
    num_prompt_tokens: int
    num_output_tokens: int
    finished: bool
    finish_reason: str | None
    state: RequestState
    handoff: Handoff | None = None


@dataclass(frozen=True, slots=True)
class Output:
    """The outputs of one engine step, with the worker's stats and step samples."""

    items: tuple[OutputItem, ...]
    kv_addr: str
    stats: WorkerStats
    steps: Any = None


@dataclass(frozen=True, slots=True)
class StatsReport:
    """A periodic report while no step produced output."""

    stats: WorkerStats
    steps: Any = None


@dataclass(frozen=True, slots=True)
class RoleChanged:
    """The worker now serves ``role``."""

    role: Role
    stats: WorkerStats


@dataclass(frozen=True, slots=True)
class KVNotice:
    """The KV of accepted request ``rid`` was imported (``ok``; ``nbytes`` moved after
    ``wait_s``) or will be recomputed (``msg`` says why)."""

    rid: int
    ok: bool
    nbytes: int = 0
    wait_s: float = 0.0
    msg: str = ""


@dataclass(frozen=True, slots=True)
class WorkerError:
    """A command failed (``rid``: its request, when it had one); ``status``: the HTTP status
    the request fails with (0: the dispatcher's default, 400 for a prompt and 503 for a
    decode; an external engine's backend passes the upstream status through)."""

    rid: int | None
    msg: str
    status: int = 0


Event = Ready | Output | StatsReport | RoleChanged | KVNotice | WorkerError


# ---------------------------------------------------------------------- codecs
@functools.lru_cache(maxsize=1024)
def _params_out(params: SamplingParams) -> dict[str, Any]:
    """The wire form of ``params``, shared by messages with equal parameters (read only)."""
    return params_to_wire(params)


def _stats_in(d: Any) -> WorkerStats:
    if not isinstance(d, dict):
        raise TypeError("stats is not a map")
    return WorkerStats(**d)


def _handoff_out(h: Handoff) -> dict[str, Any]:
    return {"handle": handle_to_wire(h.handle), "ref": h.ref}


def _handoff_in(d: Any) -> Handoff:
    ref = d["ref"]
    if ref is not None and not isinstance(ref, bytes):
        raise TypeError("the hand-off reference is not bytes")
    return Handoff(handle_from_wire(d["handle"]), ref)


def _item_out(i: OutputItem) -> list[Any]:
    return [i.rid, list(i.token_ids), i.text, i.num_prompt_tokens, i.num_output_tokens,
            i.finished, i.finish_reason, int(i.state),
            None if i.handoff is None else _handoff_out(i.handoff)]


def _item_in(row: Any) -> OutputItem:
    rid, ids, text, n_prompt, n_out, finished, reason, state, handoff = row
    return OutputItem(_int(rid), tuple(ids), _str(text), _int(n_prompt), _int(n_out),
                      bool(finished), None if reason is None else _str(reason),
                      RequestState(state), None if handoff is None else _handoff_in(handoff))


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{v!r} is not an integer")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{v!r} is not a string")
    return v


_Codec = tuple[type, Callable[[Any], dict[str, Any]], Callable[[dict[str, Any]], Any]]

_COMMANDS: dict[str, _Codec] = {
    "submit": (Submit,
               lambda m: {"rid": m.rid, "ids": list(m.ids), "params": _params_out(m.params),
                          "local": m.local},
               lambda d: Submit(_int(d["rid"]), tuple(_int(t) for t in d["ids"]),
                                params_from_wire(d["params"]), bool(d["local"]))),
    "accept": (Accept,
               lambda m: {"rid": m.rid, "handoff": _handoff_out(m.handoff), "src": m.src},
               lambda d: Accept(_int(d["rid"]), _handoff_in(d["handoff"]), _str(d["src"]))),
    "abort": (Abort, lambda m: {"rid": m.rid}, lambda d: Abort(_int(d["rid"]))),
    "kv_lost": (KVLost, lambda m: {"rid": m.rid}, lambda d: KVLost(_int(d["rid"]))),
    "set_role": (SetRole, lambda m: {"role": str(m.role)}, lambda d: SetRole(Role(d["role"]))),
    "stop": (Stop, lambda m: {}, lambda d: Stop()),
}

_EVENTS: dict[str, _Codec] = {
    "ready": (Ready,
              lambda m: {"kv_addr": m.kv_addr, "pid": m.pid, "max_model_len": m.max_model_len,
                         "stats": m.stats.as_dict()},
              lambda d: Ready(_str(d["kv_addr"]), _int(d["pid"]), _int(d["max_model_len"]),
                              _stats_in(d["stats"]))),
    "out": (Output,
            lambda m: {"items": [_item_out(i) for i in m.items], "kv_addr": m.kv_addr,
                       "stats": m.stats.as_dict(), "steps": m.steps},
            lambda d: Output(tuple(_item_in(r) for r in d["items"]), _str(d["kv_addr"]),
                             _stats_in(d["stats"]), d["steps"])),
    "stats": (StatsReport, lambda m: {"stats": m.stats.as_dict(), "steps": m.steps},
              lambda d: StatsReport(_stats_in(d["stats"]), d["steps"])),
    "role": (RoleChanged, lambda m: {"role": str(m.role), "stats": m.stats.as_dict()},
             lambda d: RoleChanged(Role(d["role"]), _stats_in(d["stats"]))),
    "kv": (KVNotice,
           lambda m: {"rid": m.rid, "ok": m.ok, "nbytes": m.nbytes, "wait_s": m.wait_s,
                      "msg": m.msg},
           lambda d: KVNotice(_int(d["rid"]), bool(d["ok"]), _int(d["nbytes"]),
                              float(d["wait_s"]), _str(d["msg"]))),
    "error": (WorkerError, lambda m: {"rid": m.rid, "msg": m.msg, "status": m.status},
              lambda d: WorkerError(None if d["rid"] is None else _int(d["rid"]),
                                    _str(d["msg"]), _int(d["status"]))),
}

_KIND: dict[type, str] = {codec[0]: kind for table in (_COMMANDS, _EVENTS)
                          for kind, codec in table.items()}


def encode(msg: Command | Event) -> dict[str, Any]:
    """The wire map of ``msg`` (pack it with :func:`dopd.serve.wire.pack`)."""
    kind = _KIND[type(msg)]
    codec = _COMMANDS.get(kind) or _EVENTS[kind]
    return {"v": WIRE_VERSION, "k": kind, **codec[1](msg)}


def _decode(obj: Any, table: dict[str, _Codec], what: str) -> Any:
    if not isinstance(obj, dict):
        raise WireError(f"malformed {what}: a {type(obj).__name__}, not a map")
    version = obj.get("v")
    if version != WIRE_VERSION:
        raise WireError(f"{what} of wire version {version!r}; this build speaks version "
                        f"{WIRE_VERSION} (front end and workers must run the same dopd)")
    kind = obj.get("k")
    codec = table.get(kind) if isinstance(kind, str) else None
    if codec is None:
        raise WireError(f"unknown {what} kind {kind!r}; expected one of {sorted(table)}")
    try:
        return codec[2](obj)
    except (KeyError, TypeError, ValueError, DopdError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise WireError(f"malformed {what} {kind!r}: {detail}") from None


def decode_command(obj: Any) -> Command:
    """The command of a wire map; WireError for another version, kind or a bad field."""
    return _decode(obj, _COMMANDS, "command")  # type: ignore[no-any-return]


def decode_event(obj: Any) -> Event:
    """The event of a wire map; WireError for another version, kind or a bad field."""
    return _decode(obj, _EVENTS, "event")  # type: ignore[no-any-return]


__all__ = [
    "WIRE_VERSION", "Abort", "Accept", "Command", "Event", "Handoff", "KVLost", "KVNotice",
    "Output", "OutputItem", "Ready", "RoleChanged", "SetRole", "StatsReport", "Stop", "Submit",
    "WireError", "WorkerError", "WorkerStats",
]
