"""Overload, SIGTERM and slow clients on real servers (emulated mode): past its queue limits
every policy answers 429 with ``Retry-After`` and keeps its memory bounded; SIGTERM ends open
streams with an error event and ``[DONE]`` after the grace, without a traceback; idle and
slow connections are closed by the server within the configured time."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_reliability import EMULATED, blast, rss_mb

pytestmark = pytest.mark.slow

@pytest.mark.parametrize("policy", ["colocated", "static:1:1", "dopd"])
def test_overload_answers_429_with_retry_after_and_bounded_memory(server_factory, policy: str
                                                                  ) -> None:  # type: ignore[no-untyped-def]
    per_instance = 8
    server = server_factory("--instances", "2", "--policy", policy, *EMULATED,
                            "--max-queued-requests", str(per_instance))
    pid = server.proc.pid
    asyncio.run(blast(server.url, 40, 20))  # warm up (caches, first allocations)
    rss0 = rss_mb(pid)
    peak_in_flight = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak_in_flight[0] = max(peak_in_flight[0],
                                    server.get("/v1/cluster").json()["in_flight"])
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # 10x the cluster's bound of 16 in flight, 600 requests
        responses = asyncio.run(blast(server.url, 600, 160))
    finally:
        stop.set()
        watcher.join(5)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    rejected = [r for r in responses if r.status_code == 429]
    assert len(rejected) >= 100 and statuses.count(200) >= 16
    for r in rejected:
        assert 1 <= int(r.headers["retry-after"]) <= 60
        err = r.json()["error"]
        assert err["type"] == "rate_limit_error" and err["message"]
    assert peak_in_flight[0] <= 2 * per_instance
    assert rss_mb(pid) - rss0 < 80, (rss0, rss_mb(pid))


def read_sse(r: httpx.Response, out: dict) -> None:  # type: ignore[type-arg]
    for line in r.iter_lines():
        if line == "data: [DONE]":
            out["done"] = True
        elif line.startswith("data: "):
            chunk = json.loads(line[6:])
            if "error" in chunk:
                out["error"] = chunk["error"]["message"]
            elif chunk.get("usage"):
                out["tokens"] = chunk["usage"]["completion_tokens"]


def stream_until_end(url: str, max_tokens: int) -> dict:  # type: ignore[type-arg]
    out: dict = {"done": False}  # type: ignore[type-arg]
    body = {"model": "dopd-tiny", "prompt": "long", "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        out["status"] = r.status_code
        read_sse(r, out)
    return out


def test_sigterm_ends_open_streams_cleanly(server_factory) -> None:  # type: ignore[no-untyped-def]
    grace = 2.0
    server = server_factory("--instances", "2", "--policy", "colocated", *EMULATED,
                            "--shutdown-grace", str(grace))
    with ThreadPoolExecutor(10) as pool:
        long = [pool.submit(stream_until_end, server.url, 1000) for _ in range(6)]
        whole = [pool.submit(lambda: httpx.post(server.url + "/v1/completions", json={
            "model": "dopd-tiny", "prompt": "long", "max_tokens": 1000, "ignore_eos": True},
            timeout=60)) for _ in range(2)]
        time.sleep(1.5)
        short = pool.submit(stream_until_end, server.url, 8)  # ends within the grace
        time.sleep(0.2)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(grace + 30)
        took = time.monotonic() - t0
        streams = [f.result() for f in long]
        answers = [f.result() for f in whole]
        quick = short.result()
    log = server.proc.stdout.read() if server.proc.stdout else ""
    assert rc == 0 and took < grace + 10, (rc, took)
    assert quick == {"status": 200, "done": True, "tokens": 8}
    for s in streams:
        assert s["done"] and "shutting down" in s["error"], s
    for r in answers:
        assert r.status_code == 503 and "shutting down" in r.json()["error"]["message"]
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


def _open(port: int, payload: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if payload:
        s.sendall(payload)
    s.setblocking(False)
    return s


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset


def test_idle_and_slow_connections_are_closed(server_factory) -> None:  # type: ignore[no-untyped-def]
    timeout = 2.0
    server = server_factory("--instances", "1", "--policy", "colocated", *EMULATED,
                            "--http-timeout", str(timeout), "--max-connections", "700")
    kinds = [b"", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n",
             b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
             b"content-length: 1000\r\n\r\n{\"model\": "]
    t0 = time.monotonic()
    conns = [_open(server.port, kinds[i % 3]) for i in range(600)]
    opened = time.monotonic() - t0
    # the server still answers real clients meanwhile
    assert server.post("/v1/completions", {"model": "dopd-tiny", "prompt": "hi",
                                           "max_tokens": 3}).status_code == 200
    open_ = list(conns)
    deadline = time.monotonic() + timeout + opened + 10
    while open_ and time.monotonic() < deadline:
        open_ = [s for s in open_ if not _closed(s)]
        time.sleep(0.1)
    took = time.monotonic() - t0
    for s in conns:
        s.close()
    assert not open_, f"{len(open_)} of 600 connections still open after {took:.1f} s"
    assert took <= timeout + opened + 10
    # past the cap, a connection is closed as soon as it is accepted
    conns = [_open(server.port, b"") for _ in range(760)]
    time.sleep(min(1.0, timeout / 2))
    closed_at_once = sum(_closed(s) for s in conns)
    for s in conns:
        s.close()
    assert closed_at_once >= 60 - 5, closed_at_once
    assert server.post("/v1/completions", {"model": "dopd-tiny", "prompt": "hi",
                                           "max_tokens": 3}).status_code == 200
