"""A live role switch under load (emulated workers), seen in /v1/cluster, /metrics and the
dashboard in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(server_factory):  # type: ignore[no-untyped-def]
    return server_factory("--instances", "3", "--policy", "static:2:1", "--mode", "emulated",
                          "--gpu", "a100-80gb", "--perf-model", "llama-3-8b")


def wait_switch(server, timeout: float = 60.0) -> dict:  # type: ignore[no-untyped-def,type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = server.get("/v1/cluster").json()
        last = state["decisions"][-1]
        if last["status"] not in ("draining", "switching"):
            return state
        time.sleep(0.1)
    raise AssertionError("the switch did not complete")


def dashboard_dom(server) -> str:  # type: ignore[no-untyped-def]
    """The dashboard page's DOM after headless Chromium ran its script."""
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--no-first-run", "--virtual-time-budget=3000",
         "--dump-dom", server.url + "/dashboard"],
        capture_output=True, text=True, timeout=60).stdout


def dashboard_counts(server) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    dom = dashboard_dom(server)
    p = re.search(r'id="prefill-count">(\d+)<', dom)
    d = re.search(r'id="decode-count">(\d+)<', dom)
    assert p and d, dom[:500]
    return int(p.group(1)), int(d.group(1))


def test_emulated_mode_serves_openai_client(server) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    r = client.completions.create(model="dopd-tiny", prompt="Hello", max_tokens=8)
    assert len(r.choices[0].text) == 8 and r.choices[0].text.isalpha()
    chunks = list(client.chat.completions.create(
        model="dopd-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
        stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks).isalpha()
    text = server.get("/metrics").text
    assert re.search(r"^dopd_kv_bytes_moved_total [1-9]", text, re.M)


def test_live_switch_under_load_loses_nothing(server) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0,
                           timeout=120)
    before = dashboard_counts(server) if CHROMIUM else None

    def one(i: int) -> int:
        if i % 2:
            r = client.completions.create(model="dopd-tiny", prompt="p" * (10 + i),
                                          max_tokens=30)
            return r.usage.completion_tokens if r.usage else -1
        stream = client.chat.completions.create(
            model="dopd-tiny", messages=[{"role": "user", "content": "q" * i}], max_tokens=30,
            stream=True, stream_options={"include_usage": True})
        return [c for c in stream][-1].usage.completion_tokens  # type: ignore[union-attr]

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(one, i) for i in range(36)]
        time.sleep(0.5)
        r = server.post("/v1/admin/switch", {"instance": 1, "role": "decode",
                                             "reason": "test"})
        assert r.status_code == 202, r.text
        assert r.json()["decision"]["status"] == "draining"
        results = [f.result() for f in futures]
    assert results == [30] * 36
    state = wait_switch(server)
    assert state["decisions"][-1]["status"] == "done"
    assert state["counts"] == {"prefill": 1, "decode": 2, "mixed": 0}
    assert [i["role"] for i in state["instances"]] == ["prefill", "decode", "decode"]
    text = server.get("/metrics").text
    assert re.search(r"^dopd_role_switches_total 1\.0$", text, re.M)
    assert not re.search(r'dopd_request_outcomes_total\{[^}]*state="aborted"', text)
    # the switched instance takes decode work now
    for _ in range(4):
        client.completions.create(model="dopd-tiny", prompt="after", max_tokens=4)
    loads = server.get("/v1/cluster").json()["instances"]
    assert loads[1]["stats"]["kv_imports"] > 0 or loads[2]["stats"]["kv_imports"] > 0
    if before is not None:
        assert before == (2, 1)
        assert dashboard_counts(server) == (1, 2)


def test_admin_switch_rejects_bad_requests(server) -> None:  # type: ignore[no-untyped-def]
    assert server.post("/v1/admin/switch", {"instance": 9, "role": "decode"}).status_code == 404
    assert server.post("/v1/admin/switch", {"instance": 0, "role": "wizard"}).status_code == 400
    assert server.post("/v1/admin/switch", {"instance": 0, "role": "prefill"}).status_code == 409


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y "
                    "chromium)")
def test_dashboard_sees_switch_back(server) -> None:  # type: ignore[no-untyped-def]
    assert dashboard_counts(server) == (1, 2)
    r = server.post("/v1/admin/switch", {"instance": 2, "role": "prefill"})
    assert r.status_code == 202
    wait_switch(server)
    assert dashboard_counts(server) == (2, 1)
    dom = dashboard_dom(server)  # the admin switches, newest first, with their reason
    rows = re.findall(r"<tr><td[^>]*>\d\d:\d\d:\d\d</td>(.*?)</tr>", dom)
    assert len(rows) >= 2 and "decode → prefill" in rows[0] and "[admin]" in rows[0], rows
    assert "prefill → decode" in rows[1] and "test [admin]" in rows[1]
    assert "policy static:2:1 keeps its split" in dom and "makes no forecast" in dom
    html = httpx.get(server.url + "/dashboard").text
    assert "http://" not in html.replace(server.url, "") and "<script src" not in html
