"""The load generator against a real HTTP server (FastAPI + uvicorn on a free local port) that
streams tokens with known delays: measured TTFT/TPOT, open-loop timing, the concurrency cap,
error accounting and the JSON record.

The fake server is :mod:`fake_openai` (shared with ``tests/cli/test_bench_cmd.py``); prompt
synthesis is tested in ``test_loadgen_prompts.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_openai import (
    BREAK,
    ERROR_EVENT,
    FAIL_500,
    HANG,
    HOLD,
    MODEL,
    NO_FINISH,
    REJECT_429,
    FakeServer,
    serve_fake,
)

from dopd.bench.loadgen import (
    LoadGenConfig,
    LoadResult,
    client_timeline,
    clip_to_context,
    run_load,
)
from dopd.bench.loadgen_client import (
    ClientPool,
    ServedModel,
    base_url,
    probe_server,
    request_body,
    sse_lines,
)
from dopd.bench.loadgen_prompts import (
    ByteSynth,
    synthesize_prompts,
)
from dopd.bench.loadgen_report import bench_columns, bench_record, write_bench_outputs
from dopd.bench.report import write_json
from dopd.errors import DopdError
from dopd.metrics.summary import summarize_result
from dopd.sim.run_config import RunConfig
from dopd.types import SLO, RequestState
from dopd.workload import Workload


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    yield from serve_fake()


def workload(arrivals: list[float], outputs: list[int], prompt: int = 64) -> Workload:
    return Workload("test", np.array(arrivals), np.full(len(arrivals), prompt), np.array(outputs))


def run(fake: FakeServer, wl: Workload, **config: Any) -> LoadResult:
    cfg = LoadGenConfig(url=fake.url, model=MODEL, **config)
    prompts = synthesize_prompts(ByteSynth(special=1), wl, seed=0)
    return run_load(wl, prompts, cfg)


def test_measured_ttft_and_tpot_match_the_server_delays(server: FakeServer) -> None:
    server.reset(ttft_s=0.08, tpot_s=0.015)
    wl = workload([0.05 * i for i in range(12)], [20] * 12)
    result = run(server, wl)
    assert (result.state == RequestState.FINISHED).all()
    ttft = result.first_token_s - result.arrival_s
    tpot = (result.finish_s - result.first_token_s) / (result.output_tokens - 1)
    # the server's delays are floors; the ceilings leave room for a loaded CI machine. TTFT is
    # taken at the first token, not the last: the 19 gaps after it still take >= 19 x 15 ms.
    assert np.all(ttft >= 0.08 - 1e-3) and np.median(ttft) < 0.08 + 1.0
    assert np.all(result.finish_s - result.first_token_s >= 19 * 0.015 * 0.95)
    assert 0.015 * 0.95 <= np.median(tpot) < 0.015 * 6
    assert (result.output_tokens == 20).all() and (result.chunks == 20).all()
    summary = summarize_result(result, SLO(ttft_s=1.0, tpot_s=0.1))
    assert summary.attainment == 1.0 and summary.finished == 12
    assert summary.ttft_p50 == pytest.approx(np.median(ttft))
    # the server saw the requested lengths and the ignore_eos extension
    assert all(s.body["max_tokens"] == 20 and s.body["ignore_eos"] is True for s in server.seen)


def test_tpot_uses_the_reported_token_count_when_chunks_carry_several_tokens(
    server: FakeServer,
) -> None:
    server.reset(ttft_s=0.02, tpot_s=0.01, tokens_per_chunk=4)
    result = run(server, workload([0.0, 0.1], [40, 40]))
    assert (result.chunks == 10).all() and (result.output_tokens == 40).all()
    tpot = (result.finish_s - result.first_token_s) / 39
    # first chunk = tokens 0-3 at 0.05 s, last = tokens 36-39 at 0.41 s: 0.36 s / 39 tokens
    assert 0.36 / 39 * 0.95 <= np.median(tpot) < 0.36 / 39 * 6


def test_without_usage_the_chunk_count_is_the_token_count(server: FakeServer) -> None:
    server.reset(ttft_s=0.02, tpot_s=0.01, usage=False)
    result = run(server, workload([0.0, 0.05], [15, 15]))
    assert (result.output_tokens == 15).all()
    assert (result.server_output_tokens == -1).all() and (result.server_prompt_tokens == -1).all()


def test_arrivals_are_open_loop_whatever_the_server_takes(server: FakeServer) -> None:
    server.reset(ttft_s=0.8, tpot_s=0.01)  # the first answer outlives the last arrival
    arrivals = [0.0, 0.05, 0.1, 0.3, 0.32, 0.34, 0.5, 0.6]
    result = run(server, workload(arrivals, [5] * len(arrivals)))
    # never early, and sent long before the first answer (0.8 s) could free a slot
    lag = result.dispatch_s - result.arrival_s
    assert lag.min() >= -1e-3 and lag.max() < 0.4
    seen = np.array(sorted(s.at for s in server.seen))
    assert seen[-1] - seen[0] < 0.6 + 0.4
    assert server.max_active == len(arrivals) == result.max_in_flight
    assert result.capped == 0


def test_concurrency_cap_queues_requests_counts_the_wait_and_warns(server: FakeServer) -> None:
    server.reset(ttft_s=0.15, tpot_s=0.01)
    warnings: list[str] = []
    wl = workload([0.0] * 6, [6] * 6)
    cfg = LoadGenConfig(url=server.url, model=MODEL, max_concurrency=2)
    result = run_load(wl, synthesize_prompts(ByteSynth(), wl, 0), cfg, warn=warnings.append)
    assert server.max_active == 2 and result.max_in_flight == 2
    assert result.capped == 4
    assert len(warnings) == 1 and "concurrency cap of 2" in warnings[0]
    ttft = np.sort(result.first_token_s - result.arrival_s)
    # three waves of two, each holding its slots >= 0.15 + 5 x 0.01 s: the wait counts in TTFT
    assert ttft[:2].min() >= 0.15 - 1e-3 and ttft[:2].max() < 1.0
    assert ttft[2:4].min() > 0.35 - 0.01 and ttft[4:].min() > 0.55 - 0.01
    assert (np.sort(result.send_s)[2:] > 0.2 - 0.01).all()


def test_errors_are_misses_with_their_reason(server: FakeServer) -> None:
    server.reset(ttft_s=0.02, tpot_s=0.005)
    outputs = [8, FAIL_500, REJECT_429, BREAK, NO_FINISH, HANG, 8, ERROR_EVENT]
    result = run(server, workload([0.02 * i for i in range(8)], outputs), timeout_s=1.0)
    state = [RequestState(int(s)) for s in result.state]
    assert state == [RequestState.FINISHED, RequestState.ABORTED, RequestState.REJECTED,
                     RequestState.ABORTED, RequestState.ABORTED, RequestState.ABORTED,
                     RequestState.FINISHED, RequestState.ABORTED]
    assert result.reason[1] == "HTTP 500: boom"
    assert result.reason[2] == "HTTP 429: overloaded"
    assert result.reason[3].startswith("connection error")
    assert result.reason[4] == "stream ended before the answer did"
    assert result.reason[5] == "timeout after 1 s"
    assert result.reason[7] == "stream error: engine died"
    assert list(result.http_status) == [200, 500, 429, 200, 200, 200, 200, 200]
    # the broken stream got tokens before it died: TTFT is known, finish is not
    assert math.isfinite(result.first_token_s[3]) and math.isnan(result.finish_s[3])
    assert 1.0 - 0.01 <= result.done_s[5] - result.send_s[5] < 1.0 + 1.0
    summary = summarize_result(result, SLO(ttft_s=1.0, tpot_s=0.1))
    assert (summary.finished, summary.aborted, summary.rejected, summary.met) == (2, 5, 1, 2)
    assert summary.attainment == pytest.approx(2 / 8)
    record = bench_record(result, summary, offered_rate_rps=50.0)
    assert record["errors"] == {"HTTP 429": 1, "HTTP 500": 1, "connection error": 1,
                                "stream ended before the answer did": 1,
                                "stream error": 1, "timeout after 1 s": 1}


def test_failed_and_rejected_requests_count_in_the_percentiles(server: FakeServer,
                                                               tmp_path: Path) -> None:
    server.reset(ttft_s=0.02, tpot_s=0.005)
    outputs = [8] * 16 + [REJECT_429, REJECT_429, FAIL_500, 8]
    result = run(server, workload([0.01 * i for i in range(20)], outputs))
    summary = summarize_result(result, SLO(ttft_s=1.0, tpot_s=0.1))
    record = bench_record(result, summary, offered_rate_rps=100.0)
    assert record["rejected"] == 2 and record["rejected_share"] == 0.1
    assert record["ttft_unreached_share"] == pytest.approx(3 / 20)
    # 3 of 20 never got a first token: P90 (virtual index 17.1) lands on one of them
    assert record["ttft_p90"] == math.inf and record["e2e_p90"] == math.inf
    assert 0.02 <= record["ttft_p90_served"] < 0.5  # served only: fast
    assert record["ttft_p50"] == pytest.approx(summary.ttft_p50_served, abs=0.05)
    written = json.loads(write_json(tmp_path / "r.json", record).read_text())
    assert written["ttft_p90"] is None and written["ttft_p90_served"] > 0


def test_done_ends_the_answer_even_if_the_body_stays_open(server: FakeServer) -> None:
    server.reset(ttft_s=0.01, tpot_s=0.002)
    result = run(server, workload([0.0], [HOLD]), timeout_s=5.0)
    assert result.state[0] == RequestState.FINISHED and result.output_tokens[0] == HOLD
    assert result.finish_s[0] < 0.9  # the last token, not the end of the body
    assert 1.0 <= result.done_s[0] < 5.0  # the client stopped waiting for the body (open 30 s)


def test_a_server_that_ignores_stream_true_still_counts(server: FakeServer) -> None:
    server.reset(ttft_s=0.05, tpot_s=0.01, sse=False)
    result = run(server, workload([0.0, 0.05], [11, 11]))
    assert (result.state == RequestState.FINISHED).all() and (result.output_tokens == 11).all()
    assert np.all(result.first_token_s == result.finish_s)  # one body: TTFT = E2E
    assert np.min(result.first_token_s - result.arrival_s) >= 0.05 + 0.1 - 1e-3


def test_progress_is_reported_and_connections_are_reused(server: FakeServer) -> None:
    server.reset(ttft_s=0.01, tpot_s=0.002)
    calls: list[tuple[float, str]] = []
    wl = workload([0.1 * i for i in range(6)], [4] * 6)
    cfg = LoadGenConfig(url=server.url, model=MODEL, label="lbl")
    result = run_load(wl, synthesize_prompts(ByteSynth(), wl, 0), cfg,
                      progress=lambda f, d: calls.append((f, d)))
    fractions = [f for f, _ in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert calls[-1][1] == "lbl: 6 done, 0 errors"
    assert result.max_in_flight == 1


def test_client_pool_lends_idle_clients_first() -> None:
    async def scenario() -> tuple[bool, bool, int]:
        pool = ClientPool("http://127.0.0.1:1", {})
        async with pool.borrow() as a:
            pass
        async with pool.borrow() as b, pool.borrow() as c:
            reused, fresh = b is a, c is not a
        size = pool.size
        await pool.aclose()
        return reused, fresh, size

    assert asyncio.run(scenario()) == (True, True, 2)


def test_chat_endpoint_skips_the_role_chunk(server: FakeServer) -> None:
    server.reset(ttft_s=0.05, tpot_s=0.01)
    result = run(server, workload([0.0, 0.05], [10, 10]), endpoint="chat")
    assert all(s.path == "/v1/chat/completions" for s in server.seen)
    assert server.seen[0].body["messages"][0]["role"] == "user"
    assert (result.chunks == 10).all()
    assert np.min(result.first_token_s - result.arrival_s) >= 0.05 - 1e-3


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"])
def test_unicode_line_separators_inside_json_do_not_split_events(server: FakeServer,
                                                                 line_end: str) -> None:
    # U+0085 / U+2028 / U+2029 are legal unescaped in JSON strings; SSE ends lines only at
    # CR/LF (vLLM writes such characters raw; a client splitting on them loses requests).
    for char in ("\u0085", "\u2028", "\u2029"):
        server.reset(ttft_s=0.01, tpot_s=0.002, text_char=char, line_end=line_end)
        result = run(server, workload([0.0, 0.01, 0.02], [7, 7, 7]), endpoint="chat")
        assert result.reason == {}, (char, result.reason)
        assert (result.chunks == 7).all(), char


def test_sse_lines_split_only_at_cr_and_lf() -> None:
    async def lines(parts: list[bytes]) -> list[str]:
        async def gen() -> AsyncIterator[bytes]:
            for p in parts:
                yield p
        return [line async for line in sse_lines(gen())]

    text = "data: a\u0085b\r\n\r\ndata: c\rdata: d\n"
    raw = text.encode()
    want = ["data: a\u0085b", "", "data: c", "data: d"]
    assert asyncio.run(lines([raw])) == want
    for cut in range(1, len(raw)):  # every split point, CRLF and UTF-8 sequences included
        assert asyncio.run(lines([raw[:cut], raw[cut:]])) == want, cut
    assert asyncio.run(lines([b"data: x\r"])) == ["data: x"]


def test_record_has_simulate_fields_and_outputs_are_written(
    server: FakeServer, tmp_path: Path
) -> None:
    server.reset(ttft_s=0.03, tpot_s=0.005)
    wl = workload([0.0, 0.1, 0.2, 0.3], [10, FAIL_500, 10, 1], prompt=100)
    result = run(server, wl)
    slo = SLO(ttft_s=0.5, tpot_s=0.05)
    record = bench_record(result, summarize_result(result, slo), wl.rate_rps, gpus=2)
    for key in ("policy", "requests", "finished", "rejected", "aborted", "met", "attainment",
                "goodput_rps", "goodput_rps_per_gpu", "ttft_p50", "ttft_p90", "ttft_p99",
                "tpot_p50", "tpot_p90", "tpot_p99", "e2e_p50", "e2e_p90", "e2e_p99",
                "gpu_seconds", "switches", "kv_bytes_moved", "sim_end_s", "events", "wall_s"):
        assert key in record, key
    assert record["policy"] == "bench" and record["requests"] == 4 and record["met"] == 3
    assert record["goodput_rps_per_gpu"] == pytest.approx(record["goodput_rps"] / 2)
    assert record["switches"] is None and record["gpu_seconds"] == pytest.approx(
        2 * result.end_s)
    assert record["prompt_tokens_ratio"] == pytest.approx(1.0)  # dopd-tiny style: BOS + bytes
    assert record["short_outputs"] == 0
    columns = bench_columns(result)
    assert list(columns["state"]) == ["FINISHED", "ABORTED", "FINISHED", "FINISHED"]
    assert list(columns["server_prompt_tokens"]) == [100, -1, 100, 100]
    paths = write_bench_outputs(tmp_path, RunConfig(slo=slo), wl, result, {"bench": record},
                                {"url": server.url})
    names = {p.name for p in paths}
    assert {"results.json", "config.toml", "bench.json", "workload.json", "requests_bench.csv",
            "timeline_bench.csv", "latency_cdf.png", "timeline.png"} <= names
    assert json.loads((tmp_path / "results.json").read_text())["bench"]["met"] == 3
    assert (tmp_path / "timeline.png").stat().st_size > 10_000


def test_timeline_counts_waiting_and_decoding_requests(server: FakeServer) -> None:
    server.reset(ttft_s=0.3, tpot_s=0.02)
    result = run(server, workload([0.0, 0.0, 0.0], [26, 26, 26], prompt=50))
    assert result.timeline.arrivals_rps.sum() * result.timeline.time_s[1] == pytest.approx(3)
    tl = client_timeline(result.arrival_s, result.send_s, result.first_token_s,
                         result.finish_s, result.done_s, result.prompt_tokens, interval_s=0.05)
    t = np.asarray(tl.time_s)
    # windows inside the measured phases (the server's 0.3 s and 25 x 0.02 s are floors)
    mid_prefill = (t > result.send_s.max() + 0.05) & (t < result.first_token_s.min() - 0.05)
    mid_decode = (t > result.first_token_s.max() + 0.05) & (t < result.finish_s.min() - 0.05)
    assert mid_prefill.sum() >= 2 and mid_decode.sum() >= 5
    assert (tl.queued_prefill_tokens[mid_prefill] == 150).all()
    assert (tl.running_decodes[mid_prefill] == 0).all()
    assert (tl.running_decodes[mid_decode] == 3).all()
    assert (tl.queued_prefill_tokens[mid_decode] == 0).all()
    assert tl.running_decodes[-1] == 0


def test_probe_lists_models_and_fails_clearly(server: FakeServer) -> None:
    server.reset(models=("a", "b"), api_key="sekrit", max_model_len=4096)
    assert probe_server(server.url + "/v1/", "sekrit") == (ServedModel("a", 4096),
                                                          ServedModel("b", 4096))
    server.reset(models=("c",))
    assert probe_server(server.url) == (ServedModel("c", None),)
    server.reset(api_key="sekrit")
    with pytest.raises(DopdError, match="refused the API key"):
        probe_server(server.url, "wrong")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(DopdError, match=r"cannot reach the server at http://127\.0\.0\.1"):
        probe_server(f"http://127.0.0.1:{closed}", timeout_s=2)
    with pytest.raises(DopdError, match="server URL"):
        base_url("localhost:8000")


def test_request_body_shapes() -> None:
    body = request_body("completions", "m", "hi", 7, extra={"min_tokens": 7, "ignore_eos": False})
    assert body == {"model": "m", "prompt": "hi", "max_tokens": 7, "stream": True,
                    "stream_options": {"include_usage": True}, "ignore_eos": False,
                    "min_tokens": 7}
    chat = request_body("chat", "m", "hi", 3, ignore_eos=False)
    assert chat["messages"] == [{"role": "user", "content": "hi"}] and "ignore_eos" not in chat
    with pytest.raises(DopdError, match="unknown endpoint"):
        request_body("embeddings", "m", "hi", 1)


def test_config_validation() -> None:
    with pytest.raises(DopdError, match="timeout"):
        LoadGenConfig(url="http://x:1", model="m", timeout_s=0)
    with pytest.raises(DopdError, match="max concurrency"):
        LoadGenConfig(url="http://x:1", model="m", max_concurrency=0)
    with pytest.raises(DopdError, match="endpoint"):
        LoadGenConfig(url="http://x:1", model="m", endpoint="embeddings")
    with pytest.raises(DopdError, match="prompts for a workload"):
        run_load(workload([0.0], [1]), [], LoadGenConfig(url="http://x:1", model="m"))


def test_clip_to_context() -> None:
    wl = Workload("w", np.array([0.0, 1.0, 2.0]), np.array([10, 3000, 1500]),
                  np.array([5, 100, 1000]))
    clipped = clip_to_context(wl, 2048)
    assert list(clipped.prompt_tokens) == [10, 2047, 1500]
    assert list(clipped.output_tokens) == [5, 1, 548]
    with pytest.raises(DopdError, match="max context"):
        clip_to_context(wl, 1)
