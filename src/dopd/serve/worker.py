"""One worker process: the engine loop of one instance, its control channel and KV peer channel.

:func:`worker_main` (the target of a ``spawn`` process) builds the engine, binds its KV server
transport (:func:`build_transport`), says ``ready`` to the front end, then loops: handle control
commands (:mod:`dopd.serve.messages`: submit, accept, abort, KV lost, set role, stop), let the
KV transport make progress (serve peers' fetches, take arrived KV, end overdue fetches with the
recompute fallback), run one engine step, and send the step's outputs back. It exits on
``stop``, or when its parent process is gone.

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

from dopd.engine.latency_runner import LatencyModelRunner
from dopd.engine.llm_engine import LLMEngine
from dopd.engine.request_state import RequestOutput
from dopd.errors import DopdError, require
from dopd.kv.transport import ImportResult, KVTransport
from dopd.serve.channel_auth import ClusterKeys, denied
from dopd.serve.channels import WorkerControl
from dopd.serve.engines import EngineSpec, ModeledLink, build_engine
from dopd.serve.faults import CRASH_EXIT_CODE, CRASH_MARKER
from dopd.serve.kv_socket import SocketTransport
from dopd.serve.messages import (
    Abort,
    Accept,
    Event,
    Handoff,
    KVLost,
    KVNotice,
    Output,
    OutputItem,
    Ready,
    RoleChanged,
    SetRole,
    StatsReport,
    Stop,
    Submit,
    WireError,
    WorkerError,
    WorkerStats,
    decode_command,
    encode,
)
from dopd.serve.step_samples import StepBuffer, StepSample

STATS_INTERVAL_S = 0.25
_EWMA = 0.2


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker process needs: its id, the front end's control address, its engine, the
    address its KV socket binds, and the cluster's channel keys (None: plain sockets; they
    travel in the spec, never in argv or the environment, and never show in its repr);
    ``fault_injection``: the test-only crash hook of :mod:`dopd.serve.faults` is on;
    ``kv_transport``: how prefilled KV moves (:data:`KV_TRANSPORTS`, :func:`build_transport`)."""

    instance_id: int
    control_addr: str
    engine: EngineSpec
    host: str = "127.0.0.1"
    fault_injection: bool = False
    keys: ClusterKeys | None = field(default=None, repr=False)
    kv_transport: str = "socket"


class Worker:
    """The loop state of one worker (see the module docstring). ``kv`` is its KV transport
    (:mod:`dopd.kv.transport`), picked from the spec's ``kv_transport`` by
    :func:`build_transport`."""

    def __init__(self, spec: WorkerSpec, engine: LLMEngine, kv: KVTransport) -> None:
        self.spec = spec
        self.engine = engine
        self.control = WorkerControl(spec.control_addr, spec.instance_id, spec.keys)
        self.kv = kv
        # accepted requests waiting for KV blocks before their fetch starts
        self.unfetched: dict[int, Accept] = {}
        self.step_s = 0.0
        self.samples = StepBuffer()
        self._step_end: float | None = None
        self.stopping = False
        self.crash_pending = False
        self._parent = os.getppid()
        self._next_stats = 0.0
        self._poller = zmq.Poller()
        self._poller.register(self.control.socket, zmq.POLLIN)
        self._polled = 0
        # commands read while a step ran, applied after it (only hand-offs act at once)
        self.deferred: list[dict[str, Any]] = []
        runner = engine.runner
        self.wall_clock = runner.clock if isinstance(runner, LatencyModelRunner) else None
        if self.wall_clock is not None:
            self.wall_clock.wait = self.wait_in_step

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        eng = self.engine
        self._send(Ready(self.kv.address, os.getpid(), eng.max_model_len, self.stats()))
        idle_plan = True
        while not self.stopping:
            busy = eng.has_unfinished() and not idle_plan
            waiting_kv = len(eng.pending) > 0 or len(eng.leases) > 0
            timeout_ms = 0 if busy or self.deferred else (5 if waiting_kv else 50)
            due = self.kv.next_due()
            if due is not None:
                timeout_ms = min(timeout_ms, max(0, int((due - time.perf_counter()) * 1000)))
            ready = self.poll(timeout_ms)
            if self.deferred:
                deferred, self.deferred = self.deferred, []
                self.apply(deferred)
            if ready:
                self.apply(self.control.receive_all())
            if self.crash_pending:
                os._exit(CRASH_EXIT_CODE)  # the test-only crash hook (dopd.serve.faults)
            self.report_kv(self.kv.pump(ready))
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
                self.kv.release_pending()
                self.start_reserved()
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
                self._send(StatsReport(self.stats(), self.samples.drain()))
            if now >= self._next_stats:
                self._next_stats = now + STATS_INTERVAL_S
                self.kv.expire()
                if os.getppid() != self._parent:
                    break  # orphaned: the front end is gone
        self.close()

    def poll(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` for input on any socket (a transport's sockets are only
        ever added, so one poller serves the whole loop)."""
        socks = self.kv.sockets()
        if len(socks) != self._polled:
            for sock in socks[self._polled:]:
                self._poller.register(sock, zmq.POLLIN)
            self._polled = len(socks)
        return bool(self._poller.poll(timeout_ms))

    def wait_in_step(self, deadline: float) -> None:
        """An emulated step's time on the "GPU" (until ``time.perf_counter()`` reaches
        ``deadline``): the KV transport keeps serving and taking transfers, and a hand-off
        (``Accept``) reserves its blocks and starts its fetch at once, as a GPU engine's
        transfer thread does beside the compute; every other command waits for the step's end
        (:attr:`deferred`), since the running step owns the engine's batch."""
        while True:
            now = time.perf_counter()
            if now >= deadline:
                return
            until = deadline
            due = self.kv.next_due()
            if due is not None:
                until = min(until, due)
            left = until - now
            ready = False
            if left < 1e-3:
                time.sleep(max(left, 0.0))
            else:
                ready = self.poll(int(left * 1000))
            if ready:
                for raw in self.control.receive_all():
                    if not self.deferred and is_accept(raw):
                        self.apply([raw])
                    else:
                        self.deferred.append(raw)
            self.report_kv(self.kv.pump(ready))

    # ------------------------------------------------------------------ control
    def apply(self, commands: list[dict[str, Any]]) -> None:
        """Carry out control commands in order (a malformed one is answered with an error)."""
        for raw in commands:
            rid = raw.get("rid") if isinstance(raw.get("rid"), int) else None
            try:
                msg = decode_command(raw)
                match msg:
                    case Submit():
                        if self.spec.fault_injection and \
                                msg.ids[:len(CRASH_MARKER)] == CRASH_MARKER:
                            self.crash_pending = True
                        self.engine.add_request(list(msg.ids), msg.params, request_id=msg.rid,
                                                local=msg.local)
                    case Accept():
                        handle = msg.handoff.handle
                        self.engine.accept_remote(handle)
                        self.unfetched[handle.request_id] = msg
                        self.start_reserved()
                    case Abort():
                        self.engine.abort(msg.rid)
                        self.kv.cancel(msg.rid)
                        self.unfetched.pop(msg.rid, None)
                    case KVLost():  # its prefill instance died: recompute now
                        why = "the prefill instance failed"
                        if self.unfetched.pop(msg.rid, None) is not None:
                            self.engine.fail_kv(msg.rid)  # its fetch never started
                            self._send(KVNotice(msg.rid, False, 0, 0.0, why))
                        else:
                            self.report_kv([self.kv.lost(msg.rid, why)])
                    case SetRole():
                        self.engine.role = msg.role
                        self._send(RoleChanged(msg.role, self.stats()))
                    case Stop():
                        self.stopping = True
            except DopdError as exc:
                self._send(WorkerError(rid, str(exc)))

    def _send(self, msg: Event) -> None:
        self.control.send(encode(msg))

    def send_outputs(self, outputs: list[RequestOutput]) -> None:
        items = []
        for out in outputs:
            handoff = None
            if out.kv_handle is not None:
                handoff = Handoff(out.kv_handle, self.kv.publish(out.kv_handle))
            items.append(OutputItem(
                out.request_id, out.new_token_ids, out.new_text, out.num_prompt_tokens,
                out.num_output_tokens, out.finished,
                None if out.finish_reason is None else str(out.finish_reason), out.state,
                handoff))
        self._send(Output(tuple(items), self.kv.address, self.stats(), self.samples.drain()))

    def report_kv(self, results: list[ImportResult | None]) -> None:
        """Tell the front end how each ended fetch went (the engine knows already)."""
        for r in results:
            if r is not None:
                self._send(KVNotice(r.request_id, r.ok, r.nbytes, r.wait_s, r.msg))

    def start_reserved(self) -> None:
        """Start the fetches of accepted requests whose KV blocks the engine has reserved (the
        shared hand-off order: memory first, then the transfer; its timeout runs from here)."""
        if not self.unfetched:
            return
        pending = self.engine.pending
        for rid in list(self.unfetched):
            item = pending.get(rid)
            if item is not None and not item.reserved and item.payload is None:
                continue
            msg = self.unfetched.pop(rid)
            if item is None or item.payload is not None:
                continue  # imported already (KV in the handle) or recomputed
            self.kv.fetch(msg.handoff.handle, msg.src, msg.handoff.ref)

    # ------------------------------------------------------------------ stats, shutdown
    def stats(self) -> WorkerStats:
        eng = self.engine
        s = eng.scheduler
        st = eng.stats
        kv = self.kv
        return WorkerStats(
            role=str(eng.role), waiting=s.num_waiting, prefilling=s.num_prefilling,
            decode_batch=s.num_decoding, queued_prefill_tokens=s.queued_prefill_tokens,
            decode_ctx_sum=s.decode_kv_sum, pending_decodes=len(eng.pending),
            held=len(eng.leases) + kv.held, kv_used_blocks=s.blocks.used_blocks,
            kv_total_blocks=s.blocks.num_blocks, recent_step_s=self.step_s, steps=st.steps,
            unfinished=eng.num_unfinished, kv_exports=st.kv_exports, kv_imports=st.kv_imports,
            kv_recomputes=st.kv_recomputes, lease_expiries=st.lease_expiries,
            kv_bytes_sent=kv.bytes_sent, kv_bytes_received=kv.bytes_received,
            kv_failures=kv.failures, busy_s=st.busy_s,
            auth_denied=denied(self.control.context) + kv.rejected)

    def close(self) -> None:
        self.kv.close()
        self.control.close()


def is_accept(raw: dict[str, Any]) -> bool:
    """Whether a control message is a well-formed hand-off (``Accept``)."""
    try:
        return isinstance(decode_command(raw), Accept)
    except WireError:
        return False


def worker_main(spec: WorkerSpec) -> None:
    """Process entry point: build the engine and serve until ``stop`` (Ctrl-C is the front
    end's to handle, so the worker ignores SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run_worker(spec)


KV_TRANSPORTS = ("socket", "object_store")


def build_transport(spec: WorkerSpec, engine: LLMEngine) -> KVTransport:
    """The KV transport ``spec.kv_transport`` names, on the worker's KV host and keys; paced by
    the modeled link in emulated mode. ``object_store`` imports Ray (Ray actors only)."""
    require(spec.kv_transport in KV_TRANSPORTS,
            f"kv_transport must be one of {', '.join(KV_TRANSPORTS)}, got {spec.kv_transport!r}")
    link = ModeledLink.of(spec.engine) if spec.engine.mode == "emulated" else None
    timeout_s = engine.options.kv_timeout_s
    if spec.kv_transport == "object_store":
        from dopd.serve.ray_kv import ObjectStoreTransport

        return ObjectStoreTransport(engine, timeout_s, engine.options.kv_lease_s, spec.host,
                                    spec.keys, link)
    return SocketTransport(engine, timeout_s, spec.host, spec.keys, link)


def run_worker(spec: WorkerSpec) -> None:
    """Build the engine and KV transport of ``spec`` and run the worker loop until ``stop``;
    the Ray backend's actors call this too."""
    engine = build_engine(spec.engine)
    Worker(spec, engine, build_transport(spec, engine)).run()
