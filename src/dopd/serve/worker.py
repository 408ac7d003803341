"""One worker process: the engine loop of one instance, its control channel and KV peer channel.

:func:`worker_main` (the target of a ``spawn`` process) builds the engine, binds its KV server
socket, says ``ready`` to the front end, then loops: handle control commands (``submit``,
``accept``, ``abort``, ``kv_lost``, ``set_role``, ``stop``), serve KV fetches of its leased
prefills, take KV replies from peers, run one engine step, and send the step's outputs back.
It exits on ``stop``, or when its parent process is gone. Message formats:
:mod:`dopd.serve.channels`.

Every step that ran a batch is recorded (:class:`~dopd.serve.step_samples.StepBuffer`) with
its batch sums and its wall time, counted from the previous step's end when it followed it back
to back (the worker's own time between steps is part of the step, as the engine overhead is on
a GPU); the unsent samples ride, bounded, on the next ``out`` or ``stats`` event for the front
end's calibrator.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from dopd.engine.kv_handoff import KVHandle
from dopd.engine.llm_engine import LLMEngine
from dopd.engine.model import KVPayload
from dopd.engine.runner import LatencyModelRunner
from dopd.errors import DopdError
from dopd.serve.channel_auth import ClusterKeys, denied
from dopd.serve.channels import KVClient, KVServer, WorkerControl
from dopd.serve.engines import EngineSpec, ModeledLink, build_engine
from dopd.serve.faults import CRASH_EXIT_CODE, CRASH_MARKER
from dopd.serve.step_samples import StepBuffer, StepSample
from dopd.serve.wire import handle_from_wire, handle_to_wire, params_from_wire
from dopd.types import Role

STATS_INTERVAL_S = 0.25
_EWMA = 0.2


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker process needs: its id, the front end's control address, its engine, the
    address its KV socket binds, and the cluster's channel keys (None: plain sockets; they
    travel in the spec, never in argv or the environment, and never show in its repr);
    ``fault_injection``: the test-only crash hook of :mod:`dopd.serve.faults` is on."""

    instance_id: int
    control_addr: str
    engine: EngineSpec
    host: str = "127.0.0.1"
    fault_injection: bool = False
    keys: ClusterKeys | None = field(default=None, repr=False)


class Worker:
    """The loop state of one worker (see the module docstring).

    With a ``link`` (emulated mode) a KV fetch is answered when the link's modeled transfer of
    it is over, also while a step is "running" (the emulated runner waits through
    :meth:`wait_until`); the KV is released after the step. A decode worker likewise starts
    the fetch of an accepted request and takes in arriving KV while a step runs, as a GPU
    engine's KV transfer runs beside its compute (the simulator starts a hand-off at once);
    the engine sees both after the step.
    """

    def __init__(self, spec: WorkerSpec, engine: LLMEngine,
                 link: ModeledLink | None = None) -> None:
        self.spec = spec
        self.engine = engine
        self.control = WorkerControl(spec.control_addr, spec.instance_id, spec.keys)
        self.kv_server = KVServer(spec.host, spec.keys)
        self.kv_client = KVClient(spec.keys)
        self.handles: dict[int, KVHandle] = {}
        self.fetches: dict[int, tuple[float, float]] = {}  # request id -> (start, deadline)
        self.backlog: list[dict[str, Any]] = []  # control messages read during a step
        self.arrived: list[tuple[int, KVPayload | None, str | None]] = []  # KV read in a step
        self.early: set[int] = set()  # accepted during a step: fetch started, engine not told
        self.step_s = 0.0
        self.samples = StepBuffer()
        self._step_end: float | None = None
        self.kv_bytes_sent = 0
        self.kv_bytes_received = 0
        self.kv_failures = 0
        self.stopping = False
        self.crash_pending = False
        self._parent = os.getppid()
        self._next_stats = 0.0
        self._poller = zmq.Poller()
        for sock in (self.control.socket, self.kv_server.socket):
            self._poller.register(sock, zmq.POLLIN)
        self._polled_peers = 0
        self.link = link
        self.outbox: dict[int, tuple[bytes, KVPayload]] = {}  # rid -> (peer, KV) in transfer
        self.sent: list[int] = []  # KV replied to, to release
        runner = engine.runner
        self.wall_clock = runner.clock if isinstance(runner, LatencyModelRunner) else None
        if link is not None and self.wall_clock is not None:
            self.wall_clock.wait = self.wait_until

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        eng = self.engine
        self.control.send({"ev": "ready", "kv_addr": self.kv_server.address,
                           "pid": os.getpid(), "max_model_len": eng.max_model_len,
                           "stats": self.stats()})
        idle_plan = True
        while not self.stopping:
            busy = eng.has_unfinished() and not idle_plan
            waiting_kv = len(eng.pending) > 0 or len(eng.leases) > 0
            timeout_ms = 0 if busy else (5 if waiting_kv else 50)
            if self.outbox and self.link is not None:
                due = self.link.next_due()
                if due is not None:
                    left_ms = max(0, int((due - time.perf_counter()) * 1000))
                    timeout_ms = min(timeout_ms, left_ms)
            ready = self.poll(timeout_ms)
            if ready or self.backlog or self.arrived:
                self.handle_control()
                if self.crash_pending:
                    os._exit(CRASH_EXIT_CODE)  # the test-only crash hook (dopd.serve.faults)
                self.handle_fetches()
                self.handle_replies()
            self.send_due()
            self.release_sent()
            self.check_fetch_timeouts()
            if self.stopping:
                break
            outputs = []
            if eng.has_unfinished() or waiting_kv:
                start = time.perf_counter()
                if busy and self._step_end is not None:
                    start = min(start, self._step_end)
                if self.wall_clock is not None:
                    self.wall_clock.back_to_back = busy
                outputs = eng.step()
                self.release_sent()
                plan = eng.last_plan
                if plan is not None:
                    self._step_end = time.perf_counter()
                    dt = self._step_end - start
                    self.step_s = dt if self.step_s == 0 else (1 - _EWMA) * self.step_s + _EWMA * dt
                    self.samples.record(StepSample.of_plan(plan, dt))
            idle_plan = eng.last_plan is None
            now = time.monotonic()
            if outputs:
                self.send_outputs(outputs)
            elif now >= self._next_stats:
                self.control.send({"ev": "stats", "stats": self.stats(),
                                   "steps": self.samples.drain()})
            if now >= self._next_stats:
                self._next_stats = now + STATS_INTERVAL_S
                self.forget_expired()
                if os.getppid() != self._parent:
                    break  # orphaned: the front end is gone
        self.close()

    def poll(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` for input on any socket (peer sockets are only ever added,
        so one poller serves the whole loop)."""
        peers = self.kv_client.sockets()
        if len(peers) != self._polled_peers:
            for sock in peers[self._polled_peers:]:
                self._poller.register(sock, zmq.POLLIN)
            self._polled_peers = len(peers)
        return bool(self._poller.poll(timeout_ms))

    # ------------------------------------------------------------------ control
    def handle_control(self) -> None:
        msgs, self.backlog = [*self.backlog, *self.control.receive_all()], []
        for msg in msgs:
            op = msg.get("op")
            rid = msg.get("rid")
            try:
                if op == "submit":
                    ids = msg["ids"]
                    if self.spec.fault_injection and tuple(ids[:len(CRASH_MARKER)]) == \
                            CRASH_MARKER:
                        self.crash_pending = True
                    self.engine.add_request(ids, params_from_wire(msg["params"]),
                                            request_id=rid, local=bool(msg.get("local")))
                elif op == "accept":
                    handle = handle_from_wire(msg["handle"])
                    early = rid in self.early
                    self.early.discard(rid)
                    try:
                        self.engine.accept_remote(handle)
                    except DopdError:
                        self.fetches.pop(rid, None)  # started during a step: its KV is dropped
                        raise
                    if not early:
                        self.start_fetch(msg, handle)
                        now = time.monotonic()
                        self.fetches[rid] = (now, now + self.engine.options.kv_timeout_s)
                elif op == "abort":
                    self.engine.abort(rid)
                    self.handles.pop(rid, None)
                    self.fetches.pop(rid, None)
                elif op == "kv_lost":  # its prefill instance died: recompute now
                    self.complete_fetch(rid, None, "the prefill instance failed")
                elif op == "set_role":
                    self.engine.role = Role(msg["role"])
                    self.control.send({"ev": "role", "role": msg["role"],
                                       "stats": self.stats()})
                elif op == "stop":
                    self.stopping = True
                else:
                    raise DopdError(f"unknown operation {op!r}")
            except DopdError as exc:
                self.control.send({"ev": "error", "rid": rid, "msg": str(exc)})

    def send_outputs(self, outputs: list[Any]) -> None:
        items = []
        for out in outputs:
            handle = None if out.kv_handle is None else self.export_handle(out.kv_handle)
            items.append([out.request_id, list(out.new_token_ids), out.new_text,
                          out.num_prompt_tokens, out.num_output_tokens, out.finished,
                          None if out.finish_reason is None else str(out.finish_reason), handle])
        self.control.send({"ev": "out", "items": items, "kv_addr": self.kv_server.address,
                           "stats": self.stats(), "steps": self.samples.drain()})

    # ------------------------------------------------------------------ KV
    # The hooks export_handle / start_fetch / serve_fetch / complete_fetch are the KV transport:
    # peer-to-peer sockets here; dopd.serve.ray_kv overrides them for the Ray object store.
    def export_handle(self, handle: KVHandle) -> dict[str, Any]:
        """The wire form of a prefilled request's handle; its KV stays leased here until a peer
        fetches it (or the lease ends)."""
        self.handles[handle.request_id] = handle
        return handle_to_wire(handle)

    def start_fetch(self, msg: dict[str, Any], handle: KVHandle) -> None:
        """Ask the prefill peer at ``msg["src"]`` for the KV of an accepted request."""
        self.kv_client.fetch(msg["src"], handle.request_id, handle.source)

    def handle_fetches(self) -> None:
        for ident, rid, source in self.kv_server.receive_all():
            self.serve_fetch(ident, rid, source)

    def serve_fetch(self, ident: bytes, rid: int, source: str) -> None:
        handle = self.handles.pop(rid, None)
        try:
            if handle is None or handle.source != source:
                raise DopdError(f"no KV held for request {rid}")
            payload = self.engine.fetch_kv(handle)
        except DopdError as exc:
            self.kv_server.reply_error(ident, rid, str(exc))
            return
        if self.link is None:
            self.kv_bytes_sent += self.kv_server.reply(ident, rid, payload)
            self.engine.release_kv(rid)
        else:
            self.outbox[rid] = (ident, payload)
            self.link.start(rid, handle.num_tokens)

    def send_due(self) -> None:
        """Send the KV whose modeled transfer is over (emulated mode); released later."""
        if self.link is None or not self.outbox:
            return
        for rid in self.link.due():
            ident, payload = self.outbox.pop(rid)
            self.kv_bytes_sent += self.kv_server.reply(ident, rid, payload)
            self.sent.append(rid)

    def release_sent(self) -> None:
        for rid in self.sent:
            self.engine.release_kv(rid)
        self.sent.clear()

    def wait_until(self, deadline: float) -> None:
        """The emulated runner's wait for the end of its step (``time.perf_counter`` time):
        serve KV fetches and send due KV meanwhile. Runs inside a step, so it only reads the
        engine (KV export), and reads what arrives (:meth:`intake_during_step`); releases
        wait for the step's end."""
        while True:
            self.send_due()
            now = time.perf_counter()
            if now >= deadline:
                return
            until = deadline
            if self.outbox and self.link is not None:
                due = self.link.next_due()
                if due is not None:
                    until = min(until, due)
            left = until - now
            if left < 1e-3:
                time.sleep(max(left, 0.0))
            elif self.poll(int(left * 1000)):
                self.handle_fetches()
                self.intake_during_step()

    def intake_during_step(self) -> None:
        """While an emulated step runs: start the KV fetch of each accepted request and take
        in arriving KV (its ``kv`` event goes out now); the engine gets both after the step
        (:meth:`handle_control`, :meth:`handle_replies`)."""
        for msg in self.control.receive_all():
            rid = msg.get("rid")
            if msg.get("op") == "accept" and rid not in self.fetches and rid not in self.early:
                try:
                    handle = handle_from_wire(msg["handle"])
                except (DopdError, KeyError, TypeError, ValueError):
                    pass  # handle_control reports it after the step
                else:
                    self.early.add(rid)
                    self.start_fetch(msg, handle)
                    now = time.monotonic()
                    self.fetches[rid] = (now, now + self.engine.options.kv_timeout_s)
            self.backlog.append(msg)
        for rid, payload, error in self.kv_client.receive_all():
            timing = self.fetches.pop(rid, None)
            if timing is None:
                continue  # timed out already: the prompt is being recomputed
            self.arrived.append((rid, payload, error))
            if payload is not None:
                self.control.send({"ev": "kv", "rid": rid, "ok": True, "bytes": payload.nbytes,
                                   "wait_s": time.monotonic() - timing[0]})

    def handle_replies(self) -> None:
        arrived, self.arrived = self.arrived, []
        for rid, payload, error in arrived:  # read during a step; reported then if it arrived
            if payload is not None:
                self.engine.deliver_kv(rid, payload)
                self.kv_bytes_received += payload.nbytes
            else:
                self.engine.fail_kv(rid)
                self.kv_failures += 1
                self.control.send({"ev": "kv", "rid": rid, "ok": False, "bytes": 0,
                                   "msg": error or "transfer failed"})
        for rid, payload, error in self.kv_client.receive_all():
            self.complete_fetch(rid, payload, error)

    def complete_fetch(self, rid: int, payload: KVPayload | None, error: str | None) -> None:
        """The KV of ``rid`` arrived (``payload``) or its transfer failed (``error``)."""
        timing = self.fetches.pop(rid, None)
        if timing is None:
            return  # timed out already: the prompt is being recomputed
        started = timing[0]
        if payload is not None:
            self.engine.deliver_kv(rid, payload)
            self.kv_bytes_received += payload.nbytes
            self.control.send({"ev": "kv", "rid": rid, "ok": True, "bytes": payload.nbytes,
                               "wait_s": time.monotonic() - started})
        else:
            self.engine.fail_kv(rid)
            self.kv_failures += 1
            self.control.send({"ev": "kv", "rid": rid, "ok": False, "bytes": 0,
                               "msg": error or "transfer failed"})

    def check_fetch_timeouts(self) -> None:
        now = time.monotonic()
        for rid in [r for r, (_, deadline) in self.fetches.items() if now > deadline]:
            del self.fetches[rid]
            self.engine.fail_kv(rid)
            self.kv_failures += 1
            self.control.send({"ev": "kv", "rid": rid, "ok": False, "bytes": 0,
                               "msg": "KV transfer timed out"})

    def forget_expired(self) -> None:
        for rid in [r for r in self.handles if r not in self.engine.leases]:
            del self.handles[rid]

    # ------------------------------------------------------------------ stats, shutdown
    def stats(self) -> dict[str, Any]:
        eng = self.engine
        s = eng.scheduler
        st = eng.stats
        return {"role": str(eng.role), "waiting": s.num_waiting, "prefilling": s.num_prefilling,
                "decode_batch": s.num_decoding, "queued_prefill_tokens": s.queued_prefill_tokens,
                "decode_ctx_sum": s.decode_kv_sum, "pending_decodes": len(eng.pending),
                "held": len(eng.leases), "kv_used_blocks": s.blocks.used_blocks,
                "kv_total_blocks": s.blocks.num_blocks, "recent_step_s": self.step_s,
                "steps": st.steps, "unfinished": eng.num_unfinished,
                "kv_exports": st.kv_exports, "kv_imports": st.kv_imports,
                "kv_recomputes": st.kv_recomputes, "lease_expiries": st.lease_expiries,
                "kv_bytes_sent": self.kv_bytes_sent, "kv_bytes_received": self.kv_bytes_received,
                "kv_failures": self.kv_failures, "busy_s": st.busy_s,
                "auth_denied": denied(self.control.context) + self.kv_server.rejected
                + self.kv_client.rejected}

    def close(self) -> None:
        self.kv_client.close()
        self.kv_server.close()
        self.control.close()


def worker_main(spec: WorkerSpec) -> None:
    """Process entry point: build the engine and serve until ``stop`` (Ctrl-C is the front
    end's to handle, so the worker ignores SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run_worker(spec)


def run_worker(spec: WorkerSpec, worker: type[Worker] = Worker) -> None:
    """Build the engine of ``spec`` and run a ``worker`` loop (a KV transport's subclass of
    :class:`Worker`) until ``stop``; the Ray backend's actors call this too."""
    engine = build_engine(spec.engine)
    link = ModeledLink.of(spec.engine) if spec.engine.mode == "emulated" else None
    worker(spec, engine, link).run()
