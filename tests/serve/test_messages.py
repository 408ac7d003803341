"""Typed, versioned control messages: round trips, rejection of other versions and malformed
messages, at both ends (a real worker loop's control handling and the front end's cluster)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import zmq

from dopd.engine.kv_handoff import KVHandle
from dopd.engine.model import SamplingParams
from dopd.serve.cluster import ProcessLauncher, WorkerCluster, WorkerInstance
from dopd.serve.engines import EngineSpec, build_engine
from dopd.serve.kv_socket import SocketTransport
from dopd.serve.messages import (
    WIRE_VERSION,
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
    decode_event,
    encode,
)
from dopd.serve.wire import pack, unpack
from dopd.serve.worker import Worker, WorkerSpec
from dopd.types import RequestState, Role

PARAMS = SamplingParams(max_tokens=8, temperature=0.7, top_p=0.9, seed=3, stop=("x",),
                        stop_token_ids=(2,))
HANDLE = KVHandle(4, "worker-0", (1, 2, 3), 9, 3, (5,), 16, 12.5, PARAMS, 99, 8)
STATS = WorkerStats(role="prefill", waiting=2, kv_total_blocks=64, recent_step_s=0.01)

COMMANDS = [Submit(1, (5, 6), PARAMS, True), Accept(4, Handoff(HANDLE, b"ref"), "tcp://a:1"),
            Accept(4, Handoff(HANDLE), "tcp://a:1"), Abort(2), KVLost(3), SetRole(Role.DECODE),
            Stop()]
EVENTS = [Ready("tcp://k:2", 77, 2048, STATS),
          Output((OutputItem(4, (9,), "a", 3, 1, False, None, RequestState.TRANSFERRING,
                             Handoff(HANDLE)),
                  OutputItem(5, (1, 2), "bc", 2, 4, True, "length", RequestState.FINISHED)),
                 "tcp://k:2", STATS, {"v": 1, "rows": [], "dropped": 0}),
          StatsReport(STATS), RoleChanged(Role.MIXED, STATS), KVNotice(4, True, 100, 0.01),
          KVNotice(4, False, msg="KV transfer timed out"), WorkerError(None, "bad"),
          WorkerError(7, "bad"), WorkerError(8, "upstream", 502)]


@pytest.mark.parametrize("msg", COMMANDS, ids=lambda m: type(m).__name__)
def test_commands_round_trip_through_msgpack(msg: Any) -> None:
    wire = unpack(pack(encode(msg)))
    assert wire["v"] == WIRE_VERSION and decode_command(wire) == msg


@pytest.mark.parametrize("msg", EVENTS, ids=lambda m: type(m).__name__)
def test_events_round_trip_through_msgpack(msg: Event) -> None:
    assert decode_event(unpack(pack(encode(msg)))) == msg


@pytest.mark.parametrize(("wire", "message"), [
    ({"v": WIRE_VERSION + 1, "k": "abort", "rid": 1}, f"wire version {WIRE_VERSION + 1}"),
    ({"k": "abort", "rid": 1}, "wire version None"),
    ({"v": WIRE_VERSION, "k": "explode"}, "unknown command kind 'explode'"),
    ({"v": WIRE_VERSION, "k": "abort"}, "malformed command 'abort': missing field 'rid'"),
    ({"v": WIRE_VERSION, "k": "abort", "rid": "7"}, "is not an integer"),
    ({"v": WIRE_VERSION, "k": "set_role", "role": "boss"}, "malformed command 'set_role'"),
    ({"v": WIRE_VERSION, "k": "submit", "rid": 1, "ids": [1], "params": {"nope": 1},
      "local": False}, "malformed command 'submit'"),
    ([1, 2], "not a map"),
])
def test_other_versions_and_malformed_commands_are_rejected(wire: Any, message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode_command(wire)


def test_malformed_events_are_rejected() -> None:
    good = encode(EVENTS[1])
    bad_item = {**good, "items": [[4, [9], "a", 3, 1, False, None, 42, None]]}  # no state 42
    with pytest.raises(WireError, match="malformed event 'out'"):
        decode_event(bad_item)
    with pytest.raises(WireError, match="malformed event 'stats'"):
        decode_event({**encode(StatsReport(STATS)), "stats": {"surprise": 1}})
    with pytest.raises(WireError, match="unknown event kind 'submit'"):
        decode_event(encode(COMMANDS[0]))  # a command is not an event


def test_the_cluster_hands_typed_events_on_and_counts_bad_ones(
        capsys: pytest.CaptureFixture[str]) -> None:
    cluster = WorkerCluster(EngineSpec(model="dopd-tiny", role=Role.MIXED), [Role.MIXED],
                            ProcessLauncher())
    cluster.instances[0] = WorkerInstance(0, Role.MIXED, None)  # type: ignore[arg-type]
    got: list[tuple[int, Event]] = []
    cluster.listener = lambda iid, ev: got.append((iid, ev))
    cluster._on_event(0, encode(KVNotice(4, True, 10, 0.5)))
    cluster._on_event(0, encode(StatsReport(STATS)))
    assert got == [(0, KVNotice(4, True, 10, 0.5))] and cluster.instances[0].stats == STATS
    cluster._on_event(0, {**encode(KVNotice(4, True)), "v": 99})
    cluster._on_event(0, {"v": WIRE_VERSION, "k": "kv"})
    assert len(got) == 1 and cluster.bad_events == 2
    err = capsys.readouterr().err
    assert "worker 0 sent a bad event (ignored): event of wire version 99" in err
    assert "missing field 'rid'" in err


def test_a_worker_answers_a_bad_command_with_an_error_event() -> None:
    front = zmq.Context.instance().socket(zmq.ROUTER)
    front.setsockopt(zmq.LINGER, 0)
    port = front.bind_to_random_port("tcp://127.0.0.1")
    spec = WorkerSpec(0, f"tcp://127.0.0.1:{port}",
                      EngineSpec(model="dopd-tiny", role=Role.MIXED, mode="emulated",
                                 step_time_scale=0.0))
    engine = build_engine(spec.engine)
    worker = Worker(spec, engine, SocketTransport(engine, 1.0))
    try:
        worker._send(Ready(worker.kv.address, 1, engine.max_model_len, worker.stats()))
        assert front.poll(10_000)
        ident, _ = front.recv_multipart()
        front.send_multipart([ident, pack({"v": 99, "k": "abort", "rid": 1})])
        front.send_multipart([ident, pack(encode(Submit(5, (10**9,), PARAMS)))])
        front.send_multipart([ident, pack(encode(Submit(6, (1, 2, 3), PARAMS)))])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and engine.request_state(6) is None:
            worker.poll(50)
            worker.apply(worker.control.receive_all())
        events = []
        while len(events) < 2 and front.poll(10_000):
            events.append(decode_event(unpack(front.recv_multipart()[1])))
        assert isinstance(events[0], WorkerError) and events[0].rid == 1
        assert "wire version 99" in events[0].msg
        assert isinstance(events[1], WorkerError) and events[1].rid == 5
        assert "vocabulary" in events[1].msg
        assert engine.request_state(6) == RequestState.WAITING  # the good one was taken
    finally:
        worker.close()
        front.close(linger=0)
