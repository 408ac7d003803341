"""End to end: the length-aware router placing live requests of an emulated disaggregated
server; admission control answers the openai client with a 429 in the OpenAI error format."""

from __future__ import annotations

import re

import openai
import pytest
from test_role_switch import CHROMIUM, dashboard_dom

pytestmark = pytest.mark.slow

# 20 ms TTFT SLO: a 10-token prompt is predicted ~10 ms on an idle instance, a 1000-token
# one ~56 ms (Llama-3-8B on an A100), above the SLO that admission control holds it to.
ARGS = ("--mode", "emulated", "--instances", "2", "--policy", "static:1:1",
        "--router", "length-aware", "--slo-ttft", "0.02", "--max-model-len", "2048")


@pytest.fixture(scope="module")
def server(server_factory):  # type: ignore[no-untyped-def]
    return server_factory(*ARGS)


def test_hopeless_requests_get_429_and_the_rest_are_served(server) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    ok = client.completions.create(model="dopd-tiny", prompt="a" * 9, max_tokens=4,
                                   temperature=0)
    assert ok.usage is not None and ok.usage.completion_tokens == 4
    with pytest.raises(openai.RateLimitError) as err:
        client.completions.create(model="dopd-tiny", prompt="a" * 999, max_tokens=4)
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "admission_control"
    assert "predicted TTFT" in body["message"] and body["type"] == "rate_limit_error"
    cluster = server.get("/v1/cluster").json()
    assert cluster["router"] == "length-aware" and cluster["queue_order"] == "short-first"
    assert cluster["rejected"] == 1 and cluster["finished"] == 1
    books = [i["book"] for i in cluster["instances"]]
    assert all(b["waiting"] == b["decoding"] == b["held"] == b["pending"] == 0 for b in books)
    metrics = server.get("/metrics").text
    assert 'dopd_request_outcomes_total{path="colocated",state="rejected"} 1.0' in metrics
    # on a P/D split the short prompt was colocated: bypassed to the decode instance
    assert 'dopd_request_outcomes_total{path="colocated",state="finished"} 1.0' in metrics
    assert 'dopd_requests_total{endpoint="/v1/completions",status="429"} 1.0' in metrics


def test_bad_router_spec_is_a_clear_cli_error() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "dopd.cli.main", "serve", "--router",
                           "length-aware:nope=1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nope" in proc.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y "
                    "chromium)")
def test_dashboard_shows_the_router_and_rejections(server) -> None:  # type: ignore[no-untyped-def]
    dom = dashboard_dom(server)
    assert re.search(r'id="rejected">1<', dom), dom[:500]
    assert "static:1:1 / length-aware / emulated" in dom
