"""One vLLM server as an instance of the front end (:class:`VllmInstance`).

The dispatcher (:mod:`dopd.serve.dispatch`) drives every backend with the same typed commands
(:mod:`dopd.serve.messages`) and reads the same events; this class carries those commands out
as HTTP calls to a ``vllm serve`` process with vLLM's disaggregation protocol (NixlConnector,
``kv_role`` ``kv_both``), so the request flow, the router, admission control and the controller
are the shared ones, not a copy:

- ``Submit`` on a PREFILL instance (not ``local``): a completion of the prompt's token ids with
  ``max_tokens`` 1 and ``kv_transfer_params: {"do_remote_decode": true}``; its answer's
  ``kv_transfer_params`` become the request's :class:`~dopd.serve.messages.Handoff` (``ref``:
  their JSON), reported as an output with no token (vLLM's decode side computes every output
  token, so the prefill's token is not streamed). An answer without them hands off with no
  reference: the decode instance recomputes the prompt.
- ``Accept`` on a decode instance: the same prompt, streamed, with those parameters; its first
  chunk means the KV is in (vLLM pulls it before the first token): a
  :class:`~dopd.serve.messages.KVNotice`, then the outputs. The request's first token therefore
  waits until the decode side has its KV, as in the simulator.
- ``Submit`` otherwise (colocated, local, a resumed request): the whole request, streamed.
- ``Abort`` cancels the request's call (closing the connection aborts it in vLLM); ``SetRole``
  is a routing decision only (``kv_both``: every instance prefills and decodes) and is
  confirmed at once; ``KVLost`` needs nothing (vLLM's ``kv_load_failure_policy`` recompute).

An HTTP error becomes a :class:`~dopd.serve.messages.WorkerError` with the upstream status; a
call that cannot reach the server asks the fleet (``on_unreachable``) whether the instance is
gone, in which case the request is re-placed as after any lost worker. Every call is bounded
(:class:`CallLimits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from dopd.engine.kv_handoff import KVHandle
from dopd.engine.model import SamplingParams
from dopd.serve.messages import (
    Abort,
    Accept,
    Command,
    Event,
    Handoff,
    KVLost,
    KVNotice,
    Output,
    OutputItem,
    RoleChanged,
    SetRole,
    Stop,
    Submit,
    WorkerError,
    WorkerStats,
)
from dopd.types import InstanceState, RequestState, Role

PREFILL_PARAMS: dict[str, Any] = {
    "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
    "remote_block_ids": None, "remote_host": None, "remote_port": None,
}
"""The ``kv_transfer_params`` of a prefill-only request (vLLM's P/D proxy protocol)."""
_BLOCK = 16


@dataclass(frozen=True, slots=True)
class CallLimits:
    """Bounds of every upstream call: ``connect_s`` to connect, ``read_s`` between two chunks
    of an answer (a prefill's answer included), ``total_s`` for the whole call."""

    connect_s: float = 5.0
    read_s: float = 120.0
    total_s: float = 1800.0

    def timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.total_s, sock_connect=self.connect_s,
                                     sock_read=self.read_s)


def sampling_body(params: SamplingParams) -> dict[str, Any]:
    """vLLM's sampling fields of ``params`` (a default is left out)."""
    body: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p}
    if params.top_k > 0:
        body["top_k"] = params.top_k
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    if params.stop_token_ids:
        body["stop_token_ids"] = list(params.stop_token_ids)
    if params.ignore_eos:
        body["ignore_eos"] = True
    return body


class VllmInstance:
    """A ``vllm serve`` process (launched by the fleet or attached at ``url``) as an
    :class:`~dopd.serve.cluster.InstanceHandle`; events go to ``emit(iid, event)`` in the event
    loop. ``session`` is the fleet's HTTP client, ``model`` the name the server serves."""

    def __init__(self, instance_id: int, role: Role, url: str, *, limits: CallLimits) -> None:
        self.instance_id = instance_id
        self.role = role
        self.state = InstanceState.STARTING
        self.target_role: Role | None = None
        self.stats = WorkerStats(role=str(role))
        self.stats_t = 0.0
        self.url = url.rstrip("/")
        self.kv_addr = self.url
        self.pid: int | None = None
        self.restarts = 0
        self.process: Any = None
        self.launched_t = 0.0
        self.cold_start_s: float | None = None
        self.model = ""
        self.limits = limits
        self.session: aiohttp.ClientSession | None = None
        self.emit: Callable[[int, Event], None] = lambda iid, ev: None
        self.on_unreachable: Callable[[VllmInstance], bool] = lambda inst: False
        self.calls: dict[int, asyncio.Task[None]] = {}
        self.served = 0

    # ------------------------------------------------------------------ commands
    def send(self, msg: Command) -> bool:
        """Carry out ``msg`` (see the module docstring); False when the instance is not up."""
        if self.state in (InstanceState.STARTING, InstanceState.STOPPED) \
                or self.session is None:
            return False
        if isinstance(msg, Submit):
            # one token only: nothing to hand off, the prefill instance answers it whole
            prefill = self.role == Role.PREFILL and not msg.local and msg.params.max_tokens > 1
            self._call(msg.rid, self._prefill(msg) if prefill else
                       self._stream(msg.rid, msg.ids, msg.params, None, False))
        elif isinstance(msg, Accept):
            ref = msg.handoff.ref
            params = json.loads(ref) if ref else None
            h = msg.handoff.handle
            self._call(msg.rid, self._stream(msg.rid, h.prompt_ids, h.params, params, True))
        elif isinstance(msg, Abort):
            task = self.calls.pop(msg.rid, None)
            if task is not None:
                task.cancel()
            self._touch()
        elif isinstance(msg, SetRole):
            self.role = msg.role
            self.stats = _with(self.stats, role=str(msg.role))
            asyncio.get_running_loop().call_soon(
                self.emit, self.instance_id, RoleChanged(msg.role, self.stats))
        elif isinstance(msg, (KVLost, Stop)):
            pass
        return True

    def cancel_all(self) -> None:
        """Cancel every call in flight (the instance is gone or stopping)."""
        for task in self.calls.values():
            task.cancel()
        self.calls.clear()

    def _call(self, rid: int, coro: Any) -> None:
        old = self.calls.pop(rid, None)
        if old is not None:
            old.cancel()
        task = asyncio.get_running_loop().create_task(self._guard(rid, coro))
        self.calls[rid] = task
        self._touch()

    def _touch(self) -> None:
        """The proxy's own count of the requests it has on this instance, stamped now."""
        self.stats = _with(self.stats, unfinished=len(self.calls))
        self.stats_t = time.monotonic()

    def _done(self, rid: int) -> None:
        task = self.calls.get(rid)
        if task is not None and task is asyncio.current_task():
            del self.calls[rid]
            self.served += 1
            self._touch()

    async def _guard(self, rid: int, coro: Any) -> None:
        """Run one call; its failure becomes one event of that request."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except _Upstream as exc:
            self._emit(WorkerError(rid, exc.message, exc.status))
        except TimeoutError:
            self._emit(WorkerError(rid, f"vLLM instance {self.instance_id} did not answer in "
                                   f"time", 504))
        except aiohttp.ClientError as exc:
            if not self.on_unreachable(self):  # gone: the fleet reported it lost
                self._emit(WorkerError(rid, f"vLLM instance {self.instance_id}: "
                                       f"{type(exc).__name__}: {exc}", 502))
        except Exception as exc:  # a malformed answer: this request fails, nothing else
            self._emit(WorkerError(rid, f"vLLM instance {self.instance_id}: unexpected answer "
                                   f"({type(exc).__name__}: {exc})", 502))
        finally:
            self._done(rid)

    def _emit(self, ev: Event) -> None:
        self.emit(self.instance_id, ev)

    # ------------------------------------------------------------------ calls
    def _body(self, ids: tuple[int, ...], params: SamplingParams) -> dict[str, Any]:
        body = {"model": self.model, "prompt": list(ids), "max_tokens": params.max_tokens,
                "return_token_ids": True}
        body.update(sampling_body(params))
        return body

    async def _post(self, body: dict[str, Any]) -> aiohttp.ClientResponse:
        assert self.session is not None
        resp = await self.session.post(f"{self.url}/v1/completions", json=body,
                                       timeout=self.limits.timeout())
        if resp.status != 200:
            text = (await resp.text())[:300]
            resp.release()
            with contextlib.suppress(ValueError, KeyError, TypeError):
                text = json.loads(text)["error"]["message"]
            raise _Upstream(resp.status, f"vLLM instance {self.instance_id}: HTTP "
                            f"{resp.status}: {text}")
        return resp

    async def _prefill(self, msg: Submit) -> None:
        body = self._body(msg.ids, msg.params)
        body.update(max_tokens=1, stream=False, kv_transfer_params=dict(PREFILL_PARAMS))
        body.pop("min_tokens", None)
        resp = await self._post(body)
        async with resp:
            answer = await resp.json()
        kv = answer.get("kv_transfer_params")
        choice = (answer.get("choices") or [{}])[0]
        first = (choice.get("token_ids") or [0])[0]
        blocks = tuple(range(-(-len(msg.ids) // _BLOCK)))  # descriptive: vLLM keeps the real
        handle = KVHandle(msg.rid, self.url, msg.ids, int(first), len(msg.ids), blocks, _BLOCK,
                          time.monotonic() + self.limits.read_s, msg.params,
                          msg.params.seed or 0, msg.params.max_tokens)
        ref = json.dumps(kv).encode() if isinstance(kv, dict) else None
        item = OutputItem(msg.rid, (), "", len(msg.ids), 0, False, None,
                          RequestState.TRANSFERRING, Handoff(handle, ref))
        self._done(msg.rid)
        self._emit(Output((item,), self.kv_addr, self.stats))

    async def _stream(self, rid: int, ids: tuple[int, ...], params: SamplingParams,
                      kv: dict[str, Any] | None, decode: bool) -> None:
        """Stream a completion of ``ids``; ``decode``: the decode leg of a hand-off (with the
        prefill's ``kv`` parameters, or none: recomputed here)."""
        body = self._body(ids, params)
        body.update(stream=True)
        if kv is not None:
            body["kv_transfer_params"] = kv
        resp = await self._post(body)
        n_out = 0
        first = True
        async with resp:
            async for raw in resp.content:  # SSE: lines end at LF only
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    err = chunk["error"]
                    raise _Upstream(int(err.get("code") or 500),
                                    f"vLLM instance {self.instance_id}: {err.get('message')}")
                choices = chunk.get("choices") or []
                if not choices:
                    continue
                c = choices[0]
                toks = tuple(c.get("token_ids") or ())
                n_out += len(toks)
                reason = c.get("finish_reason")
                if first and decode:
                    self._emit(KVNotice(rid, kv is not None, msg="" if kv is not None else
                                        "no KV parameters from the prefill: recomputed"))
                first = False
                if reason is not None:
                    self._done(rid)
                item = OutputItem(rid, toks, c.get("text") or "", len(ids), n_out,
                                  reason is not None, reason,
                                  RequestState.FINISHED if reason is not None
                                  else RequestState.DECODING)
                self._emit(Output((item,), self.kv_addr, self.stats))
                if reason is not None:
                    return
        raise _Upstream(502, f"vLLM instance {self.instance_id} ended the stream of request "
                        f"{rid} without a finish reason")


class _Upstream(Exception):
    """An upstream answer that fails the request (HTTP ``status``, one-line ``message``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _with(stats: WorkerStats, **changes: Any) -> WorkerStats:
    import dataclasses

    return dataclasses.replace(stats, **changes)
