"""End to end: colocated serving with a real dopd-tiny worker, through the openai client."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

KEY = "test-key"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(server_factory):  # type: ignore[no-untyped-def]
    return server_factory("--instances", "1", "--policy", "colocated", "--max-model-len", "256",
                          api_key=KEY)


@pytest.fixture(scope="module")
def client(server):  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def test_completion_greedy_and_usage(client) -> None:  # type: ignore[no-untyped-def]
    a = client.completions.create(model="dopd-tiny", prompt="Hello", max_tokens=8,
                                  temperature=0)
    b = client.completions.create(model="dopd-tiny", prompt="Hello", max_tokens=8,
                                  temperature=0)
    assert a.choices[0].text == b.choices[0].text
    assert a.usage is not None
    assert a.usage.prompt_tokens == 6  # BOS + 5 bytes
    assert a.usage.completion_tokens == 8
    assert a.choices[0].finish_reason == "length"


def test_streamed_chat(client) -> None:  # type: ignore[no-untyped-def]
    stream = client.chat.completions.create(
        model="dopd-tiny", messages=[{"role": "user", "content": "Hi there"}], max_tokens=6,
        temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    full = client.chat.completions.create(
        model="dopd-tiny", messages=[{"role": "user", "content": "Hi there"}], max_tokens=6,
        temperature=0)
    assert full.choices[0].message.content == text
    assert full.usage is not None and full.usage.prompt_tokens == chunks[-1].usage.prompt_tokens


def test_streamed_completion_matches_blocking(client) -> None:  # type: ignore[no-untyped-def]
    parts = [c.choices[0].text for c in client.completions.create(
        model="dopd-tiny", prompt="abc", max_tokens=5, temperature=0, stream=True)]
    whole = client.completions.create(model="dopd-tiny", prompt="abc", max_tokens=5,
                                      temperature=0)
    assert "".join(parts) == whole.choices[0].text


def test_models_health_metrics(server, client) -> None:  # type: ignore[no-untyped-def]
    assert [m.id for m in client.models.list().data] == ["dopd-tiny"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    text = httpx.get(server.url + "/metrics").text
    assert 'dopd_requests_total{endpoint="/v1/completions",status="200"}' in text
    assert "dopd_ttft_seconds_bucket" in text and "dopd_tpot_seconds_count" in text
    assert 'dopd_instances{role="mixed"} 1.0' in text


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"model": "nope", "prompt": "x"}, 404, "does not exist"),
    ({"model": "dopd-tiny", "prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
    ({"model": "dopd-tiny", "prompt": "x", "max_tokens": 10**9}, 400, "context window"),
    ({"model": "dopd-tiny", "prompt": "y" * 400}, 400, "context window"),
    ({"model": "dopd-tiny", "prompt": ""}, 400, "empty"),
    ({"model": "dopd-tiny", "prompt": [999999]}, 400, "vocabulary"),
    ({"model": "dopd-tiny"}, 400, "prompt"),
    ({"model": "dopd-tiny", "prompt": "x", "temperature": "hot"}, 400, "temperature"),
])
def test_bad_input_gets_openai_4xx(server, body, status, fragment) -> None:  # type: ignore[no-untyped-def]
    r = server.post("/v1/completions", body)
    assert r.status_code == status
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"] == "invalid_request_error"


def test_malformed_json_and_wrong_key(server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(server.url + "/v1/completions", content=b"{not json",
                   headers={**server.headers(), "content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "dopd-tiny",
                   "messages": [{"role": "user", "content": "x"}]},
                   headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = server.post("/v1/chat/completions", {"model": "dopd-tiny", "messages": []})
    assert r.status_code == 400
    r = server.post("/v1/chat/completions", {"model": "dopd-tiny",
                                             "messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 400


def test_openai_client_sees_errors(client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="dopd-tiny", prompt="x", max_tokens=0)
    bad = openai.OpenAI(base_url=client.base_url, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_sigterm_finishes_in_flight_and_exits_zero(server) -> None:  # type: ignore[no-untyped-def]
    """Runs last in this module: stops the server while a streamed request is in flight."""
    result: dict[str, object] = {}
    started = threading.Event()

    def stream() -> None:
        body = {"model": "dopd-tiny", "prompt": "long", "max_tokens": 60, "temperature": 0,
                "stream": True, "ignore_eos": True}
        chunks = []
        with httpx.stream("POST", server.url + "/v1/completions", json=body,
                          headers=server.headers(), timeout=60) as r:
            for line in r.iter_lines():
                started.set()
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line[6:]))
                elif line == "data: [DONE]":
                    result["done"] = True
        result["chunks"] = chunks

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(30)
    code = server.stop()
    thread.join(30)
    assert code == 0
    assert result.get("done") is True
    chunks = result["chunks"]
    assert isinstance(chunks, list)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    out = server.proc.stdout.read() if server.proc.stdout else ""
    assert "stopped" in out
