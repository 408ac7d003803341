"""The dashboard's data and page on a real ``dopd serve`` (emulated workers, policy dopd): the
typed /v1/cluster fields, a policy decision that says why with the numbers behind it, and
the page in headless Chromium (charts, captions, the decision in the table)."""

from __future__ import annotations

import io
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_role_switch import CHROMIUM, dashboard_dom

from dopd.serve.dashboard import DASHBOARD_HTML

pytestmark = pytest.mark.slow

# opt-13b on an L40S: 2P:1D is overloaded by ~3 req/s of long outputs, 1P:2D is not.
ARGS = ("--instances", "3", "--policy", "dopd:init=2/1", "--mode", "emulated",
        "--perf-model", "opt-13b", "--gpu", "l40s", "--slo-ttft", "0.5", "--slo-tpot", "0.1")
CHARTS = ("c-att", "c-goodput", "c-ttft", "c-tpot", "c-rate", "c-pd", "c-load", "c-kv")
OPTIONAL_FLOAT = (float, type(None))


@pytest.fixture(scope="module")
def server(server_factory):  # type: ignore[no-untyped-def]
    return server_factory(*ARGS)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_prediction(p: dict[str, Any]) -> None:
    assert set(p) == {"ttft_p90_s", "tpot_p90_s", "attainment", "overloaded"}
    assert all(isinstance(p[k], OPTIONAL_FLOAT) for k in ("ttft_p90_s", "tpot_p90_s"))
    assert isinstance(p["overloaded"], bool) and isinstance(p["attainment"], OPTIONAL_FLOAT)


def check_stats(o: dict[str, Any]) -> None:
    assert isinstance(o["ended"], int) and isinstance(o["finished"], int)
    assert is_num(o["window_s"]) and is_num(o["arrival_rps"])
    for k in ("ttft_p50_s", "ttft_p90_s", "tpot_p50_s", "tpot_p90_s", "attainment",
              "goodput_rps"):
        assert isinstance(o[k], OPTIONAL_FLOAT), k


def test_the_page_is_self_contained_with_charts_and_captions() -> None:
    assert "<script src" not in DASHBOARD_HTML and "http://" not in DASHBOARD_HTML
    for cid in CHARTS:
        assert f'<canvas id="{cid}">' in DASHBOARD_HTML
    assert DASHBOARD_HTML.count("<figcaption") == len(CHARTS)
    assert DASHBOARD_HTML.count("<caption") == 2 and "Role decisions" in DASHBOARD_HTML
    for text in ("TTFT (s)", "TPOT (ms)", "SLO attainment (%)", "arrivals (req/s)",
                 "instances", "KV cache in use (%)", "time (", "P90", "forecast upper bound"):
        assert text in DASHBOARD_HTML, text


def split_reason(why: str) -> str:
    """The P/D split's part of a dopd reason, after the hybrid's choice of split over all-mixed."""
    hybrid, sep, split = why.partition("; forecast ")
    assert sep and hybrid.startswith("hybrid: split ("), why
    return "forecast " + split


def test_idle_cluster_state_is_typed(server) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    state = server.get("/v1/cluster").json()
    while state["plan"] is None and time.monotonic() < deadline:  # dopd plans every 2 s
        time.sleep(0.5)
        state = server.get("/v1/cluster").json()
    assert state["slo"] == {"ttft_s": 0.5, "tpot_s": 0.1, "attainment": 0.9}
    assert is_num(state["window_s"]) and is_num(state["settle_s"]) and is_num(state["wall_s"])
    assert abs(state["wall_s"] - time.time()) < 60
    plan = state["plan"]
    assert plan["current"] == "2P:1D" and isinstance(plan["acted"], bool)
    split = split_reason(plan["why"])
    assert "keep 2P:1D predicted" in split and "SLO" not in split  # idle: holds
    assert is_num(plan["forecast_rps"]) and plan["forecast_upper_rps"] >= plan["forecast_rps"]
    check_prediction(plan["predicted_current"])
    assert state["forecast"]["rate_rps"] == plan["forecast_rps"]
    point = state["history"][-1]
    for k in ("t", "wall", "arrival_rps"):
        assert is_num(point[k]), k
    for k in ("prefill", "decode", "mixed", "transitioning", "in_flight", "waiting"):
        assert isinstance(point[k], int), k
    for k in ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90", "attainment", "goodput_rps",
              "forecast_rps", "forecast_upper_rps", "kv_prefill", "kv_decode"):
        assert isinstance(point[k], OPTIONAL_FLOAT), k
    assert point["attainment"] is None and point["ttft_p90"] is None  # nothing ended yet
    assert (point["prefill"], point["decode"]) == (2, 1) and point["kv_decode"] == 0.0


def wait_for(server, pred, timeout: float) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = server.get("/v1/cluster").json()
        if pred(state):
            return state  # type: ignore[no-any-return]
        time.sleep(0.5)
    raise AssertionError(f"timed out; last decisions: {state['decisions']}")


@pytest.fixture(scope="module")
def decided(server) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Long outputs at 3 req/s until the policy switches a prefill instance to decode."""
    stop = threading.Event()

    def one(i: int) -> None:
        httpx.post(server.url + "/v1/completions", timeout=120, json={
            "model": "dopd-tiny", "prompt": "x" * (60 + i % 50), "max_tokens": 300,
            "ignore_eos": True})

    def drive() -> None:  # until the policy decides (stop), at most 100 s of load
        for i in range(300):
            if stop.is_set():
                return
            pool.submit(one, i)
            time.sleep(1 / 3)

    with ThreadPoolExecutor(64) as pool:
        driver = threading.Thread(target=drive)
        driver.start()
        try:
            state = wait_for(server, lambda s: any(d["source"] == "policy"
                                                   for d in s["decisions"]), 150)
        finally:
            stop.set()
            driver.join()
        yield state


def test_a_policy_decision_says_why_with_its_numbers(server, decided) -> None:  # type: ignore[no-untyped-def]
    d = next(d for d in decided["decisions"] if d["source"] == "policy")
    assert (d["from"], d["to"]) == ("prefill", "decode")
    split = split_reason(d["reason"])
    assert split.startswith("forecast ") and "2P:1D predicted" in split
    assert "> SLO" in split and "-> 1P:2D predicted" in split
    assert is_num(d["wall"]) and is_num(d["t"])
    plan = d["plan"]
    assert (plan["current"], plan["target"], plan["acted"]) == ("2P:1D", "1P:2D", True)
    assert plan["why"] == d["reason"] and is_num(plan["forecast_rps"])
    check_prediction(plan["predicted_current"])
    check_prediction(plan["predicted_target"])
    assert plan["predicted_target"]["attainment"] > plan["predicted_current"]["attainment"]
    check_stats(d["observed_before"])
    # what happened after the switch took effect is filled in SETTLE_S later
    state = wait_for(server, lambda s: next(x for x in s["decisions"] if x["source"] ==
                                            "policy")["observed_after"] is not None, 60)
    after = next(x for x in state["decisions"] if x["source"] == "policy")["observed_after"]
    check_stats(after)
    assert after["finished"] > 0 and after["tpot_p90_s"] is not None
    assert after["start"] >= d["t"]
    loaded = [p for p in state["history"] if p["ttft_p90"] is not None]
    assert loaded and all(0 <= p["attainment"] <= 1 for p in loaded)
    assert any(p["arrival_rps"] > 0.5 for p in state["history"])
    assert any(p["kv_decode"] and p["kv_decode"] > 0 for p in state["history"])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y "
                    "chromium)")
def test_dashboard_in_chromium_shows_the_decision_and_draws(server, decided) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    dom = dashboard_dom(server)
    assert "Role decisions" in dom and 'class="muted">no role change yet' not in dom
    assert "prefill → decode (2P:1D → 1P:2D)" in dom
    assert "2P:1D predicted" in dom and "&gt; SLO 500 ms" in dom  # the why, in the table
    assert 'id="plan-text">waiting' not in dom and "dopd:init=2/1" in dom
    assert "SLO: TTFT p90 ≤ 500 ms, TPOT p90 ≤ 100 ms, attainment target 90%" in dom
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "dashboard.png"
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--hide-scrollbars", "--no-first-run", "--virtual-time-budget=3000",
             f"--screenshot={png}", "--window-size=1400,1800", server.url + "/dashboard"],
            capture_output=True, timeout=60)
        image = Image.open(io.BytesIO(png.read_bytes())).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    count = {rgb: n for n, rgb in colours}
    assert count.get((0xd6, 0x27, 0x28), 0) > 2000  # the decode band of the P/D chart
    assert count.get((0x1f, 0x77, 0xb4), 0) > 2000  # the prefill band
