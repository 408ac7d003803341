"""The front end's hot path: the event-loop ZMQ control channel, the SSE byte templates, the
exact front-end latency record, and (end to end) streaming, 405, the debug endpoint and the
abort of a request whose client went away."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
import zmq

from dopd.serve.channels import FrontControl
from dopd.serve.metrics import FrontendTimes
from dopd.serve.protocol import StreamChunks, chat_chunk, completion_chunk, sse
from dopd.serve.wire import pack, unpack

LOOPS = ["asyncio"]
try:
    import uvloop

    LOOPS.append("uvloop")
except ImportError:  # pragma: no cover - uvloop is in the serve extra
    uvloop = None


def _echo_worker(address: str, ready: threading.Event, stop: threading.Event) -> None:
    """A DEALER ``w0`` that says hello twice, then echoes every command back as an event."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, b"w0")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    sock.send(pack({"ev": "hello", "n": 0}))
    sock.send(pack({"ev": "hello", "n": 1}))
    ready.set()
    while not stop.is_set():
        if sock.poll(20):
            msg = unpack(sock.recv())
            sock.send(pack({"ev": "echo", "n": msg["n"]}))
    sock.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_front_control_delivers_every_event_in_order(loop_kind: str) -> None:
    async def main() -> list[dict[str, Any]]:
        front = FrontControl()
        ready, stop = threading.Event(), threading.Event()
        worker = threading.Thread(target=_echo_worker, args=(front.address, ready, stop))
        worker.start()
        got: list[dict[str, Any]] = []
        arrived = asyncio.Event()

        def handler(iid: int, ev: dict[str, Any]) -> None:
            assert iid == 0
            got.append(ev)
            arrived.set()

        assert ready.wait(10)
        await asyncio.sleep(0.05)  # the hellos wait in the socket before run() starts
        task = asyncio.create_task(front.run(handler))
        try:
            assert not front.send(7, {"n": -1})  # no such worker
            for n in range(300):  # one command, then wait for its echo: no edge may be lost
                arrived.clear()
                assert front.send(0, {"n": n})
                while not got or got[-1].get("n") != n:
                    await asyncio.wait_for(arrived.wait(), 5)
                    arrived.clear()
            burst = 200
            for n in range(300, 300 + burst):  # many in flight at once
                assert front.send(0, {"n": n})
            deadline = time.monotonic() + 10
            while len(got) < 302 + burst and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            stop.set()
            worker.join(5)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            front.close()
        return got

    got = uvloop.run(main()) if loop_kind == "uvloop" else asyncio.run(main())
    assert [g["n"] for g in got] == [0, 1, *range(500)]
    assert [g["ev"] for g in got[:3]] == ["hello", "hello", "echo"]


def test_stream_chunks_equal_the_chunk_builders() -> None:
    c = StreamChunks('cmpl-"q"', "dopd-tiny", chat=False)

    def expect(d: dict[str, Any]) -> bytes:
        d["created"] = c.created
        return sse(d)

    rid = 'cmpl-"q"'
    assert c.delta("héllo\n", None) == expect(completion_chunk(rid, "dopd-tiny", "héllo\n",
                                                               None))
    assert c.delta("a", [1, 2]) == expect(completion_chunk(rid, "dopd-tiny", "a", None, [1, 2]))
    assert c.final("length", True) == expect(completion_chunk(rid, "dopd-tiny", "", "length",
                                                              []))
    assert c.final("eos") == expect(completion_chunk(rid, "dopd-tiny", "", "eos"))
    c = StreamChunks("chat-1", "m", chat=True)
    rid = "chat-1"
    assert c.role() == expect(chat_chunk(rid, "m", {"role": "assistant", "content": ""}, None))
    assert c.delta("x", [5]) == expect(chat_chunk(rid, "m", {"content": "x"}, None, [5]))
    assert c.final("stop") == expect(chat_chunk(rid, "m", {}, "stop"))
    usage = json.loads(c.usage(3, 4)[6:])
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 7


def test_frontend_times_are_exact_and_bounded() -> None:
    times = FrontendTimes(capacity=1000)
    assert times.summary()["requests"] == 0
    rng = np.random.default_rng(0)
    a, b = rng.exponential(1e-4, 1500), rng.exponential(2e-4, 1500)
    for x, y in zip(a, b, strict=True):
        times.record(float(x), float(y))
    s = times.summary()
    assert s["requests"] == 1000  # the last 1000
    assert s["arrival_to_submit_ms"]["p50"] == pytest.approx(np.percentile(a[500:], 50) * 1e3)
    assert s["event_to_write_ms"]["p99"] == pytest.approx(np.percentile(b[500:], 99) * 1e3)
    assert s["front_end_ms"]["max"] == pytest.approx((a[500:] + b[500:]).max() * 1e3)
    times.reset()
    assert times.summary()["requests"] == 0


@pytest.fixture(scope="module")
def emulated(server_factory):  # type: ignore[no-untyped-def]
    return server_factory("--instances", "1", "--mode", "emulated", "--step-time-scale", "1")


@pytest.mark.slow
def test_stream_debug_times_and_method(emulated) -> None:  # type: ignore[no-untyped-def]
    assert emulated.post("/debug/frontend/reset", {}).json() == {"reset": True}
    body = {"model": "dopd-tiny", "prompt": "hi", "max_tokens": 3, "stream": True,
            "return_token_ids": True}
    with httpx.stream("POST", emulated.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert sum(len(c["choices"][0]["token_ids"]) for c in chunks) == 3
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len({c["id"] for c in chunks}) == 1
    times = emulated.get("/debug/frontend").json()
    assert times["requests"] == 1
    assert 0 < times["front_end_ms"]["p50"] < 1000
    r = emulated.get("/v1/completions")
    assert r.status_code == 405 and "POST" in r.json()["error"]["message"]
    assert r.headers["allow"] == "POST"


@pytest.mark.slow
def test_client_gone_mid_stream_aborts(emulated) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "dopd-tiny", "prompt": "a long one", "max_tokens": 1500, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", emulated.url + "/v1/completions", json=body, timeout=30) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: {")
            if seen >= 3:
                break  # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 10
    while emulated.get("/v1/cluster").json()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert emulated.get("/v1/cluster").json()["in_flight"] == 0
    metrics = emulated.get("/metrics").text
    assert 'dopd_request_outcomes_total{path="colocated",state="aborted"} 1.0' in metrics


@pytest.mark.slow
def test_chat_role_chunk_comes_with_the_first_token(server_factory) -> None:  # type: ignore[no-untyped-def]
    # A client that times TTFT from the first chunk (vLLM's benchmark does) must see the
    # prefill in it: the role-only chunk may not go out before the first token.
    slow = server_factory("--instances", "1", "--mode", "emulated", "--step-time-scale", "10")
    body = {"model": "dopd-tiny", "messages": [{"role": "user", "content": "word " * 250}],
            "max_tokens": 2, "stream": True}
    t0 = time.perf_counter()
    arrivals: list[tuple[float, dict]] = []  # type: ignore[type-arg]
    with httpx.stream("POST", slow.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                arrivals.append((time.perf_counter() - t0, json.loads(line[6:])))
    role_s, role = arrivals[0]
    first_token_s = next(t for t, c in arrivals if c["choices"] and
                         c["choices"][0]["delta"].get("content"))
    assert role["choices"][0]["delta"]["role"] == "assistant"
    assert first_token_s > 0.1, "the prefill should take a visible time at this scale"
    assert role_s > 0.7 * first_token_s, (role_s, first_token_s)
