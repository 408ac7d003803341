"""Fault isolation on real servers and workers (emulated mode): a poison request fails alone,
the cluster survives 100 crashing requests, a frozen worker is detected and its requests finish
elsewhere, a killed decode worker leaves the prefill worker serving whole requests, and no
request is lost when a prefill worker dies during KV transfers.

Crashes come from the test-only hook (``--fault-injection``: a prompt starting with
``CRASH_MARKER`` makes its worker exit with its whole batch)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from dopd.serve.faults import CRASH_MARKER

pytestmark = pytest.mark.slow

EMULATED = ("--mode", "emulated", "--step-time-scale", "4")


def stream(url: str, prompt: str | list[int], max_tokens: int = 40) -> tuple[int | str, bool]:
    """(tokens streamed or the error message it ended with, whether ``[DONE]`` came)."""
    body = {"model": "dopd-tiny", "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    result: int | str = "no usage"
    done = False
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
            if r.status_code != 200:
                r.read()
                return f"HTTP {r.status_code}", False
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        result = chunk["error"]["message"]
                    elif chunk.get("usage"):
                        result = int(chunk["usage"]["completion_tokens"])
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}", done
    return result, done


def wait_for(check, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    """Poll ``check`` until true; returns the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"not {what} after {timeout:g} s")


def cluster(server) -> dict:  # type: ignore[no-untyped-def]
    return server.get("/v1/cluster").json()  # type: ignore[no-any-return]


def ready(server) -> bool:  # type: ignore[no-untyped-def]
    return server.get("/ready").status_code == 200  # type: ignore[no-any-return]


def crash_prompt(i: int) -> list[int]:
    return [*CRASH_MARKER, 10 + i % 50, 20 + i // 50]


@pytest.fixture(scope="module")
def crashy(server_factory, tmp_path_factory):  # type: ignore[no-untyped-def]
    cfg = Path(tmp_path_factory.mktemp("faults")) / "serve.toml"
    cfg.write_text("[serve]\nrestart_backoff_s = 0.1\nrestart_backoff_max_s = 1.0\n")
    return server_factory("--config", str(cfg), "--instances", "2", "--policy", "colocated",
                          *EMULATED, "--fault-injection")


def test_poison_request_fails_alone(crashy) -> None:  # type: ignore[no-untyped-def]
    server = crashy
    with ThreadPoolExecutor(9) as pool:
        innocents = [pool.submit(stream, server.url, f"innocent {i}") for i in range(8)]
        time.sleep(1.0)  # they are decoding on both workers
        poison = pool.submit(stream, server.url, crash_prompt(0))
        assert poison.result()[0] == "HTTP 500" or "not retried" in str(poison.result()[0])
        results = [f.result() for f in innocents]
    assert results == [(40, True)] * 8  # every innocent request of both batches finished
    state = cluster(server)
    assert state["poisoned"] >= 1
    assert sum(i["restarts"] for i in state["instances"]) >= 2  # it took both workers down
    wait_for(lambda: ready(server), 90, "ready again")
    r = server.post("/v1/completions", {"model": "dopd-tiny", "prompt": crash_prompt(0),
                                        "max_tokens": 4, "ignore_eos": True})
    assert r.status_code == 500 and r.json()["error"]["code"] == "poison_request"


def crash_until_final(url: str, i: int) -> int:
    """Send crashing request ``i`` as a polite client does: again after each 503 (honouring
    ``Retry-After``, at most 1 s), until another answer or 90 s; returns the final status."""
    deadline = time.monotonic() + 90
    while True:
        r = httpx.post(url + "/v1/completions", json={
            "model": "dopd-tiny", "prompt": crash_prompt(i % 6 + 1), "max_tokens": 8},
            timeout=120)
        if r.status_code != 503 or time.monotonic() > deadline:
            return r.status_code
        assert "retry-after" in r.headers
        time.sleep(min(1.0, float(r.headers["retry-after"])))


def test_cluster_survives_100_crashing_requests(crashy) -> None:  # type: ignore[no-untyped-def]
    server = crashy
    wait_for(lambda: ready(server), 90, "ready")
    before = sum(i["restarts"] for i in cluster(server)["instances"])
    with ThreadPoolExecutor(20) as pool:
        # 100 crashing requests of 6 distinct prompts: each distinct one crashes workers until
        # it is known as poison, then its copies fail at once
        statuses = list(pool.map(lambda i: crash_until_final(server.url, i), range(100)))
    assert statuses == [500] * 100
    state = cluster(server)
    restarts = sum(i["restarts"] for i in state["instances"]) - before
    assert restarts >= 6  # more than the old lifetime budget of 5, and still restarting
    assert server.get("/health").status_code == 200
    wait_for(lambda: ready(server), 120, "ready after the crashes")
    outs = [stream(server.url, f"after {i}", 6) for i in range(4)]
    assert outs == [(6, True)] * 4


def test_frozen_worker_is_detected_and_its_requests_finish_elsewhere(server_factory
                                                                     ) -> None:  # type: ignore[no-untyped-def]
    stall_s = 2.0
    server = server_factory("--instances", "2", "--policy", "colocated", *EMULATED,
                            "--worker-stall-timeout", str(stall_s))
    victim = None
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(stream, server.url, f"frozen {i}", 60) for i in range(8)]
            time.sleep(1.5)
            victim = cluster(server)["instances"][0]
            assert victim["load"] >= 1
            os.kill(victim["pid"], signal.SIGSTOP)
            detected = wait_for(lambda: cluster(server)["instances"][0]["state"] != "active",
                                stall_s + 8, "detected")
            results = [f.result() for f in futures]
        assert detected <= stall_s + 3, detected  # the timeout plus the watch's turn and load
        assert results == [(60, True)] * 8
        assert cluster(server)["stalls"] == 1
        wait_for(lambda: cluster(server)["instances"][0]["state"] == "active", 90, "restarted")
        assert cluster(server)["instances"][0]["pid"] != victim["pid"]
    finally:
        if victim is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim["pid"], signal.SIGKILL)


def test_killed_decode_worker_prefill_serves_whole_requests(server_factory
                                                            ) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--instances", "2", "--policy", "static:1:1", *EMULATED)
    inst = {i["role"]: i for i in cluster(server)["instances"]}
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(stream, server.url, f"pd {i}", 40) for i in range(6)]
        time.sleep(1.5)
        os.kill(inst["decode"]["pid"], signal.SIGKILL)
        time.sleep(0.3)
        # while the decode worker restarts, new requests are served whole by the prefill one
        assert ready(server)
        during = [pool.submit(stream, server.url, f"during {i}", 10) for i in range(4)]
        results = [f.result() for f in futures]
        later = [f.result() for f in during]
    assert results == [(40, True)] * 6  # the cut streams went on, none lost
    assert later == [(10, True)] * 4


def test_killed_prefill_worker_during_kv_transfers_loses_nothing(server_factory
                                                                 ) -> None:  # type: ignore[no-untyped-def]
    kv_timeout = 60.0  # the decode side would wait this long for KV that never comes
    server = server_factory("--instances", "2", "--policy", "static:1:1", *EMULATED,
                            "--kv-timeout", str(kv_timeout))
    inst = {i["role"]: i for i in cluster(server)["instances"]}
    with ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(stream, server.url, "p" * (50 + 20 * i), 20) for i in range(24)]
        time.sleep(0.8)  # prompts are being prefilled and handed off
        os.kill(inst["prefill"]["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        results = [f.result() for f in futures]
        took = time.monotonic() - t0
    assert results == [(20, True)] * 24
    assert took < kv_timeout / 2  # lost KV is recomputed at once, not after the timeout
