"""End to end: prefill on one real worker, KV over the ZMQ peer channel, decode on another."""

from __future__ import annotations

import re

import openai
import pytest
import torch

from dopd.engine.llm_engine import LLMEngine
from dopd.engine.model import SamplingParams

PROMPTS = ["Hello", "The quick brown fox jumps over the lazy dog", "x" * 40]

pytestmark = pytest.mark.slow


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def reference() -> list[tuple[int, ...]]:
    """Greedy outputs of the colocated path: one MIXED engine in this process."""
    torch.set_num_threads(1)
    engine = LLMEngine.from_pretrained("dopd-tiny")
    outs = engine.generate(PROMPTS, SamplingParams(max_tokens=12, temperature=0))
    return [c.token_ids for c in outs]


@pytest.fixture(scope="module")
def disagg(server_factory):  # type: ignore[no-untyped-def]
    return server_factory("--instances", "2", "--policy", "static:1:1")


def test_disaggregated_greedy_equals_colocated(disagg, reference) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=disagg.url + "/v1", api_key="none", max_retries=0)
    for prompt, expected in zip(PROMPTS, reference, strict=True):
        r = client.completions.create(model="dopd-tiny", prompt=prompt, max_tokens=12,
                                      temperature=0, extra_body={"return_token_ids": True})
        assert tuple(r.choices[0].model_extra["token_ids"]) == expected
        assert r.usage is not None and r.usage.completion_tokens == len(expected)
    text = disagg.get("/metrics").text
    assert metric(text, 'dopd_request_outcomes_total{path="disaggregated",state="finished"}') \
        == len(PROMPTS)
    moved = metric(text, "dopd_kv_bytes_moved_total")
    # dopd-tiny: 4 layers x (K, V) x 4 KV heads x 32 dims x 4 bytes = 4096 bytes per token
    prompt_tokens = sum(len(p.encode()) + 1 for p in PROMPTS)
    assert moved == prompt_tokens * 4096
    assert metric(text, 'dopd_kv_transfers_total{result="ok"}') == len(PROMPTS)
    state = disagg.get("/v1/cluster").json()
    prefill, decode = state["instances"]
    assert prefill["role"] == "prefill" and decode["role"] == "decode"


def test_streamed_chat_through_disaggregation(disagg) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=disagg.url + "/v1", api_key="none", max_retries=0)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="dopd-tiny", messages=msgs, max_tokens=8, temperature=0, stream=True))
    whole = client.chat.completions.create(model="dopd-tiny", messages=msgs, max_tokens=8,
                                           temperature=0)
    assert streamed == whole.choices[0].message.content


def test_kv_timeout_falls_back_to_recompute(server_factory, reference) -> None:  # type: ignore[no-untyped-def]
    """A KV timeout far below the transfer time: the decode worker recomputes the prompt,
    and the output is still the colocated path's."""
    server = server_factory("--instances", "2", "--policy", "static:1:1", "--kv-timeout",
                            "0.000001")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    r = client.completions.create(model="dopd-tiny", prompt=PROMPTS[1], max_tokens=12,
                                  temperature=0, extra_body={"return_token_ids": True})
    assert tuple(r.choices[0].model_extra["token_ids"]) == reference[1]
    text = server.get("/metrics").text
    assert metric(text, "dopd_kv_transfer_failures_total") == 1
    assert metric(text, "dopd_kv_bytes_moved_total") == 0
