"""A worker takes hand-offs while an emulated step runs, and the live controller tells its policy
modeled time: the two rules that make ``dopd serve --mode emulated`` agree with the simulator
(``tests/serve/test_sim_vs_live.py`` checks the agreement end to end)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

from dopd.control.policies.base import ClusterPolicy
from dopd.engine.kv_handoff import KVHandle
from dopd.engine.model import SamplingParams
from dopd.serve.controller import Controller
from dopd.serve.dispatch import Dispatcher
from dopd.serve.engines import EngineSpec, build_engine
from dopd.serve.kv_socket import SocketTransport
from dopd.serve.messages import Accept, Handoff, Ready, Submit, encode
from dopd.serve.metrics import ServeMetrics
from dopd.serve.runtime import build_policy
from dopd.serve.serve_config import ServeConfig
from dopd.serve.wire import pack
from dopd.serve.worker import Worker, WorkerSpec
from dopd.types import Role

PARAMS = SamplingParams(max_tokens=8)


def handle(rid: int) -> KVHandle:
    return KVHandle(rid, "worker-9", (1, 2, 3), 9, 3, (5,), 16, time.monotonic() + 60, PARAMS,
                    99, 8)


@pytest.fixture
def decode_worker() -> Iterator[tuple[Worker, zmq.Socket, bytes]]:
    """A decode worker on a real control socket, and the front end's end of it."""
    ctx = zmq.Context.instance()
    front = ctx.socket(zmq.ROUTER)
    front.setsockopt(zmq.LINGER, 0)
    port = front.bind_to_random_port("tcp://127.0.0.1")
    spec = WorkerSpec(0, f"tcp://127.0.0.1:{port}",
                      EngineSpec(model="dopd-tiny", role=Role.DECODE, mode="emulated",
                                 step_time_scale=0.0))
    engine = build_engine(spec.engine)
    worker = Worker(spec, engine, SocketTransport(engine, 30.0))
    try:
        worker._send(Ready(worker.kv.address, 1, engine.max_model_len, worker.stats()))
        assert front.poll(10_000)
        ident, _ = front.recv_multipart()
        yield worker, front, ident
    finally:
        worker.close()
        front.close(linger=0)


def test_hand_off_is_taken_during_a_step_other_commands_after_it(decode_worker) -> None:  # type: ignore[no-untyped-def]
    worker, front, ident = decode_worker
    front.send_multipart([ident, pack(encode(Accept(4, Handoff(handle(4)), "tcp://127.0.0.1:1")))])
    front.send_multipart([ident, pack(encode(Submit(6, (1, 2, 3), PARAMS)))])
    start = time.perf_counter()
    worker.wait_in_step(start + 0.5)  # the emulated step "on the GPU"
    assert time.perf_counter() - start >= 0.5  # the step took its time
    item = worker.engine.pending.get(4)
    assert item is not None and item.reserved  # blocks reserved mid-step ...
    assert 4 not in worker.unfetched  # ... and the fetch started
    assert worker.engine.request_state(6) is None  # a new prompt waits for the step's end
    assert len(worker.deferred) == 1
    worker.apply(worker.deferred)
    assert worker.engine.request_state(6) is not None


def test_commands_keep_their_order_behind_a_deferred_one(decode_worker) -> None:  # type: ignore[no-untyped-def]
    worker, front, ident = decode_worker
    front.send_multipart([ident, pack(encode(Submit(6, (1, 2, 3), PARAMS)))])
    front.send_multipart([ident, pack(encode(Accept(4, Handoff(handle(4)), "tcp://127.0.0.1:1")))])
    worker.wait_in_step(time.perf_counter() + 0.3)
    assert worker.engine.pending.get(4) is None  # queued behind the submit, not overtaking it
    assert len(worker.deferred) == 2


def test_controller_tells_the_policy_modeled_time() -> None:
    dispatcher = Dispatcher({}, lambda iid: "")
    controller = Controller(ClusterPolicy(), {}, dispatcher, ServeMetrics(), time_scale=4.0)
    controller.t0 = 100.0
    assert controller.policy_time(108.0) == pytest.approx(2.0)
    assert controller.view().now == pytest.approx(controller.policy_time(), abs=0.5)
    controller.feed_cold_start(20.0)
    assert controller.cold_starts == [5.0]
    with pytest.raises(Exception, match="time_scale"):
        Controller(ClusterPolicy(), {}, dispatcher, ServeMetrics(), time_scale=0.0)


def test_policy_plans_against_the_modeled_slo() -> None:
    config = ServeConfig(mode="emulated", step_time_scale=4.0, slo_ttft_s=2.0, slo_tpot_s=0.4,
                         policy="dopd", perf_model="llama-3-8b", gpu="a100-80gb")
    assert config.time_scale == 4.0
    policy = build_policy(config)
    assert policy.slo.ttft_s == pytest.approx(0.5)  # type: ignore[attr-defined]
    assert policy.slo.tpot_s == pytest.approx(0.1)  # type: ignore[attr-defined]
    assert ServeConfig(mode="real", step_time_scale=4.0).time_scale == 1.0
    assert ServeConfig(mode="emulated", step_time_scale=0.0).time_scale == 1.0
