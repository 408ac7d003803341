"""A worker crash fails or retries only the requests it held; the `dopd` policy drives a live
cluster through the controller."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow


def stream_tokens(url: str, i: int) -> int | str:
    """Tokens streamed for one request, or the error message it ended with."""
    body = {"model": "dopd-tiny", "prompt": f"request {i}", "max_tokens": 40, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
        if r.status_code != 200:
            return f"HTTP {r.status_code}"
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return chunk["error"]["message"]
            if chunk.get("usage"):
                return int(chunk["usage"]["completion_tokens"])
    return "no usage"


def test_worker_crash_only_hits_its_requests(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--instances", "2", "--policy", "colocated", "--mode", "emulated",
                            "--step-time-scale", "4")
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(stream_tokens, server.url, i) for i in range(8)]
        time.sleep(1.0)
        state = server.get("/v1/cluster").json()
        victim = state["instances"][0]
        held = victim["load"]
        assert held >= 1
        os.kill(victim["pid"], signal.SIGKILL)
        results = [f.result() for f in futures]
    failed = [r for r in results if r != 40]
    assert len(failed) <= held
    assert all(isinstance(r, str) and "instance 0 failed" in r for r in failed)
    assert results.count(40) >= 8 - held
    # the server goes on serving, and the worker comes back
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    for _ in range(3):
        assert client.completions.create(model="dopd-tiny", prompt="still", max_tokens=3
                                         ).usage.completion_tokens == 3  # type: ignore[union-attr]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        inst = server.get("/v1/cluster").json()["instances"][0]
        if inst["state"] == "active":
            break
        time.sleep(0.3)
    assert inst["state"] == "active" and inst["restarts"] == 1 and inst["pid"] != victim["pid"]
    text = server.get("/metrics").text
    assert re.search(r"^dopd_worker_crashes_total 1\.0$", text, re.M)


def test_dopd_policy_drives_live_cluster(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--instances", "3", "--policy", "dopd", "--mode", "emulated",
                            "--tick", "0.3")
    state = server.get("/v1/cluster").json()
    assert state["policy"] == "dopd"
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda i: client.completions.create(
            model="dopd-tiny", prompt="z" * (20 + i), max_tokens=6).usage.completion_tokens,
            range(18)))
    assert outs == [6] * 18
    time.sleep(1.0)
    state = server.get("/v1/cluster").json()
    assert len(state["history"]) >= 3 and state["finished"] >= 18
    roles = {i["role"] for i in state["instances"]}
    assert roles <= {"prefill", "decode", "mixed"}
