"""dopd in front of real ``vllm serve`` instances (CPU build, NIXL over loopback): greedy
tokens through the disaggregated path equal a single instance's, a P/D switch under load loses
no request, a killed instance fails or retries only its own requests. Skipped without the
vLLM environment (see conftest)."""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from vllm_helpers import Upstream, attach_args, fleet_args, free_port

from dopd.engine.model import Tokenizer
from dopd.serve.vllm.prom import parse_samples

MAX_TOKENS = 12
PROMPTS = ["hello world, this is a test", "the quick brown fox", "dopd drives vLLM",
           "a somewhat longer prompt " * 6, "x"]


def tokens(server_url: str, prompt: str, max_tokens: int = MAX_TOKENS,
           stream: bool = False, timeout: float = 120.0) -> list[int]:
    """Greedy token ids of ``prompt`` through dopd (JSON or SSE)."""
    body = {"model": served(server_url), "prompt": prompt, "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "return_token_ids": True, "stream": stream}
    if not stream:
        r = httpx.post(f"{server_url}/v1/completions", json=body, timeout=timeout)
        assert r.status_code == 200, r.text
        return list(r.json()["choices"][0]["token_ids"])
    out: list[int] = []
    with httpx.stream("POST", f"{server_url}/v1/completions", json=body,
                      timeout=timeout) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                out += chunk["choices"][0].get("token_ids") or []
    return out


@functools.cache
def served(url: str) -> str:
    """The model name the server at ``url`` serves."""
    return str(httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"])


def direct(url: str, ids: list[int], max_tokens: int = MAX_TOKENS) -> list[int]:
    """Greedy token ids of a plain request to one vLLM instance."""
    r = httpx.post(f"{url}/v1/completions", timeout=120, json={
        "model": served(url), "prompt": ids, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True, "return_token_ids": True})
    assert r.status_code == 200, r.text
    return list(r.json()["choices"][0]["token_ids"])


def counter(url: str, name: str) -> float:
    samples = parse_samples(httpx.get(f"{url}/metrics", timeout=10).text)
    return sum(v for _, v in samples.get(name, []))


@pytest.fixture(scope="module")
def reference(upstream: Upstream, tiny_llama: Path) -> dict[str, list[int]]:
    """Each prompt's greedy tokens from one vLLM instance alone: instance 0, which prefills
    first, so the decode instance's prefix cache is empty and it pulls every prompt's KV."""
    tok = Tokenizer.from_folder(tiny_llama)
    return {p: direct(upstream.urls[0], tok.encode(p)) for p in PROMPTS}


def test_disaggregated_greedy_equals_a_single_instance(fleet_factory, upstream, tiny_llama,
                                                       reference) -> None:  # type: ignore[no-untyped-def]
    server = fleet_factory(*attach_args(tiny_llama, upstream, "--policy", "static:1:1"))
    roles = [i["role"] for i in server.get("/v1/cluster").json()["instances"]]
    assert roles == ["prefill", "decode"]
    pulls = counter(upstream.urls[1], "vllm:nixl_xfer_time_seconds_count")
    prefilled = counter(upstream.urls[0], "vllm:generation_tokens_total")
    for prompt in PROMPTS:
        assert tokens(server.url, prompt) == reference[prompt], prompt
    assert tokens(server.url, PROMPTS[0], stream=True) == reference[PROMPTS[0]]
    # every request was prefilled on instance 0 (one token each) and its KV pulled by 1
    n = len(PROMPTS) + 1
    assert counter(upstream.urls[0], "vllm:generation_tokens_total") - prefilled >= n
    assert counter(upstream.urls[1], "vllm:nixl_xfer_time_seconds_count") - pulls >= n
    # a one-token request has nothing to hand off: the prefill instance answers it whole
    assert tokens(server.url, PROMPTS[1], max_tokens=1) == reference[PROMPTS[1]][:1]


def test_a_pd_switch_under_load_loses_no_request(fleet_factory, upstream, tiny_llama,
                                                 reference) -> None:  # type: ignore[no-untyped-def]
    server = fleet_factory(*attach_args(tiny_llama, upstream, "--policy", "static:1:1"))
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(24)]

    def one(p: str) -> tuple[str, list[int]]:
        return p, tokens(server.url, p, stream=True)

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(one, p) for p in prompts]
        time.sleep(0.5)
        for iid, role in ((0, "decode"), (1, "prefill")):
            r = server.post("/v1/admin/switch", {"instance": iid, "role": role})
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                insts = server.get("/v1/cluster").json()["instances"]
                if insts[iid]["role"] == role and insts[iid]["state"] == "active":
                    break
                time.sleep(0.1)
            else:
                pytest.fail(f"instance {iid} did not switch to {role}")
        results = [f.result(timeout=300) for f in futures]
    for p, got in results:
        assert got == reference[p], p
    roles = [i["role"] for i in server.get("/v1/cluster").json()["instances"]]
    assert roles == ["decode", "prefill"]
    # the roles swapped: prefills now on instance 1, decodes (and their KV pulls) on 0, for a
    # prompt instance 0 has not cached (a prefix it holds is not pulled)
    fresh = "a prompt that only instance 1 has seen before this request"
    expected = direct(upstream.urls[1], Tokenizer.from_folder(tiny_llama).encode(fresh))
    pulls = counter(upstream.urls[0], "vllm:nixl_xfer_time_seconds_count")
    assert tokens(server.url, fresh) == expected
    assert counter(upstream.urls[0], "vllm:nixl_xfer_time_seconds_count") > pulls


def test_attach_to_nothing_fails_with_one_line(tmp_path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "dopd.cli.main", "serve",
                        "--vllm-start-timeout", "3", "--engine", "vllm", "--instances", "1",
                        "--model", str(tiny_llama),
                        "--port", str(free_port()),
                        "--vllm-url", f"http://127.0.0.1:{free_port()}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if "not healthy after 3 s" in ln]
    assert len(errors) == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_a_killed_instance_fails_or_retries_only_its_requests(fleet_factory, tiny_llama,
                                                              tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = fleet_factory(*fleet_args(tiny_llama, 2, "--policy", "colocated",
                                       log_dir=tmp_path))
    insts = server.get("/v1/cluster").json()["instances"]
    victim = insts[0]["pid"]
    want = {p: tokens(server.url, p) for p in PROMPTS[:3]}
    prompts = [PROMPTS[i % 3] for i in range(16)]

    def one(p: str) -> tuple[str, int, list[int]]:
        body = {"model": served(server.url), "prompt": p, "max_tokens": 48, "temperature": 0,
                "ignore_eos": True, "return_token_ids": True}
        r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=300)
        ids = r.json()["choices"][0]["token_ids"] if r.status_code == 200 else []
        return p, r.status_code, ids

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, p) for p in prompts]
        time.sleep(1.0)
        os.killpg(victim, signal.SIGKILL)
        results = [f.result(timeout=400) for f in futures]
    ok = [(p, ids) for p, status, ids in results if status == 200]
    assert all(status in (200, 500, 502, 503) for _, status, _ in results), results
    for p, ids in ok:  # a retried request resumed from its streamed tokens: same greedy output
        assert ids[:MAX_TOKENS] == want[p][:MAX_TOKENS]
    assert len(ok) >= len(prompts) // 2
    # the survivor keeps serving while the dead instance restarts
    assert tokens(server.url, PROMPTS[0]) == want[PROMPTS[0]]
    restarts = server.get("/v1/cluster").json()["instances"][0]["restarts"]
    assert restarts >= 1 or 0 in server.get("/health").json()["restarting"]
