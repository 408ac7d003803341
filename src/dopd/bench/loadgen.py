"""Open-loop load generator for OpenAI-compatible servers (the engine of ``dopd bench``).

:func:`run_load` replays a :class:`~dopd.workload.Workload` against a server: request ``i`` is
sent at ``arrival_s[i]`` seconds after the start whatever happened to the others (open loop, so
a slow server cannot slow the arrivals down: no coordinated omission), streamed, and timed on the
client. Latencies count from the *scheduled* arrival, so time a request spends waiting for the
concurrency cap (``max_concurrency``) or on a late generator counts in its TTFT, as it would for
a user. The first time the cap is reached a warning is given.

Outcomes follow DESIGN.md's metrics: a complete stream is FINISHED with ``first_token_s`` = the
first content chunk and ``finish_s`` = the last one, and ``output_tokens`` = the server's
reported completion tokens (or the chunk count), so TPOT = (last - first) / (tokens - 1). An
HTTP 429 is REJECTED (admission control); every other failure (HTTP error, broken stream,
per-request timeout) is ABORTED with the reason, e.g. ``HTTP 500: ...``; both count as misses.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from dopd.bench.loadgen_client import (
    ENDPOINTS,
    ClientPool,
    StreamResult,
    auth_headers,
    base_url,
    request_body,
    stream_request,
)
from dopd.errors import require
from dopd.sim.api import Timeline
from dopd.types import RequestState
from dopd.workload import Workload

ProgressFn = Callable[[float, str], None]
WarnFn = Callable[[str], None]

_PROGRESS_EVERY_S = 0.25


@dataclass(frozen=True)
class LoadGenConfig:
    """Where and how to send the load.

    ``url`` is the server's base URL (``http://host:port``, a trailing ``/v1`` is accepted);
    ``endpoint`` is ``completions`` or ``chat``; ``timeout_s`` bounds each request from its send;
    ``max_concurrency`` caps the requests in flight (None: no cap); ``ignore_eos`` and
    ``extra_body`` shape the body (see :func:`~dopd.bench.loadgen_client.request_body`);
    ``label`` names the run in reports, as a policy name does for ``dopd simulate``.
    """

    url: str
    model: str
    endpoint: str = "completions"
    api_key: str | None = None
    timeout_s: float = 600.0
    max_concurrency: int | None = None
    ignore_eos: bool = True
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    label: str = "bench"

    def __post_init__(self) -> None:
        base_url(self.url)
        require(bool(self.model.strip()), "model name must not be empty")
        require(self.endpoint in ENDPOINTS,
                f"unknown endpoint {self.endpoint!r}; use one of {', '.join(ENDPOINTS)}")
        require(self.timeout_s > 0 and math.isfinite(self.timeout_s),
                f"timeout must be > 0 s, got {self.timeout_s}")
        require(self.max_concurrency is None or self.max_concurrency >= 1,
                f"max concurrency must be >= 1, got {self.max_concurrency}")
        require(bool(self.label.strip()), "label must not be empty")


@dataclass(frozen=True, eq=False)
class LoadResult:
    """Per-request outcomes of a load run as column arrays (request-id order) plus run facts.

    Has the column attributes of ``dopd.sim.api.SimResult`` (so ``summarize_result``,
    ``request_columns`` and ``plot_latency_cdfs`` take it); times are seconds from the start of
    the run, NaN where never reached. Client-only columns: ``dispatch_s`` (when the generator
    issued the request), ``send_s`` (when it went on the wire, after any wait for the cap),
    ``done_s`` (when its stream ended, complete or not), ``requested_tokens`` (the workload's
    output length, asked as ``max_tokens``), ``chunks``,
    ``server_prompt_tokens`` / ``server_output_tokens`` (usage figures, -1 when not reported),
    ``http_status`` (0: no response). ``prefill_instance`` / ``decode_instance`` are -1 (a
    client cannot see them). ``capped`` counts requests that waited for the concurrency cap.
    """

    policy: str
    request_id: np.ndarray
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    state: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    dispatch_s: np.ndarray
    send_s: np.ndarray
    done_s: np.ndarray
    requested_tokens: np.ndarray
    chunks: np.ndarray
    server_prompt_tokens: np.ndarray
    server_output_tokens: np.ndarray
    http_status: np.ndarray
    prefill_instance: np.ndarray
    decode_instance: np.ndarray
    timeline: Timeline
    reason: dict[int, str]
    wall_s: float
    end_s: float
    capped: int
    max_in_flight: int

    def __len__(self) -> int:
        return int(self.request_id.shape[0])


def client_timeline(
    arrival_s: np.ndarray,
    send_s: np.ndarray,
    first_token_s: np.ndarray,
    finish_s: np.ndarray,
    done_s: np.ndarray,
    prompt_tokens: np.ndarray,
    interval_s: float | None = None,
) -> Timeline:
    """What the client saw over time, sampled every ``interval_s`` (default: span / 100,
    clipped to [0.5 s, 10 s]): arrivals per second over the last interval, prompt tokens of
    requests sent and waiting for their first token (``queued_prefill_tokens``), and requests
    between first and last token (``running_decodes``); a request stops counting when its
    stream ends (``done_s``). Instance counts are 0 (unknown to a client)."""
    span = max(float(np.nanmax(np.append(done_s, 0.0))), float(arrival_s[-1]), 1e-9)
    step = interval_s if interval_s is not None else float(np.clip(span / 100, 0.5, 10.0))
    t = np.arange(0.0, span + step, step)
    arrivals = np.histogram(arrival_s, bins=np.append(t - step, t[-1]))[0]

    def at(values: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(values), np.inf, values)[None, :]

    tt = t[:, None]
    done = at(done_s)
    waiting = (at(send_s) <= tt) & (tt < np.minimum(at(first_token_s), done))
    decoding = (at(first_token_s) <= tt) & (tt < np.minimum(at(finish_s), done))
    zeros = np.zeros(t.size, dtype=np.int64)
    return Timeline(
        time_s=t,
        prefill_instances=zeros,
        decode_instances=zeros,
        mixed_instances=zeros,
        arrivals_rps=arrivals / step,
        queued_prefill_tokens=(waiting * prompt_tokens[None, :]).sum(axis=1),
        running_decodes=decoding.sum(axis=1),
    )


@dataclass
class _Counters:
    sent: int = 0
    done: int = 0
    errors: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    capped: int = 0


async def _run(
    workload: Workload,
    prompts: Sequence[str],
    config: LoadGenConfig,
    progress: ProgressFn | None,
    warn: WarnFn | None,
) -> tuple[list[StreamResult], np.ndarray, _Counters, float]:
    n = len(workload)
    path = ENDPOINTS[config.endpoint]
    cap = config.max_concurrency
    gate = asyncio.Semaphore(cap) if cap is not None else None
    counts = _Counters()
    results: list[StreamResult | None] = [None] * n
    dispatch = np.full(n, np.nan)
    arrivals = workload.arrival_s.tolist()
    outputs = workload.output_tokens.tolist()
    start = math.inf  # set just before the first dispatch, once the HTTP stack is warm

    def clock() -> float:
        return time.perf_counter() - start

    async def send(i: int) -> None:
        body = request_body(config.endpoint, config.model, prompts[i], outputs[i],
                            ignore_eos=config.ignore_eos, extra=config.extra_body)
        counts.in_flight += 1
        counts.max_in_flight = max(counts.max_in_flight, counts.in_flight)
        try:
            async with pool.borrow() as client:
                result = await stream_request(client, path, body, clock, config.timeout_s)
        finally:
            counts.in_flight -= 1
        results[i] = result
        counts.done += 1
        counts.errors += bool(result.error)

    async def one(i: int) -> None:
        if gate is None:
            await send(i)
            return
        if gate.locked():
            counts.capped += 1
            if counts.capped == 1 and warn is not None:
                warn(f"concurrency cap of {cap} requests reached at {clock():.1f} s: further "
                     "requests wait for a free slot and the wait counts in their TTFT")
        async with gate:
            await send(i)

    async def report() -> None:
        while progress is not None:
            progress(counts.done / n, f"{config.label}: {counts.sent}/{n} sent, "
                     f"{counts.in_flight} in flight, {counts.errors} errors")
            await asyncio.sleep(_PROGRESS_EVERY_S)

    pool = ClientPool(config.url, auth_headers(config.api_key))
    try:
        # The first request of a process pays ~20-30 ms of one-off setup in the HTTP stack;
        # a harmless GET pays it before the clock starts (and leaves a warm connection).
        async with pool.borrow() as client:
            with contextlib.suppress(httpx.HTTPError):
                await client.get("/v1/models", timeout=min(config.timeout_s, 10.0))
        if progress is not None:  # a progress display may take a while to set up: not on the clock
            progress(0.0, f"{config.label}: starting")
        start = time.perf_counter()
        reporter = asyncio.create_task(report())
        tasks = []
        for i, arrival in enumerate(arrivals):
            delay = arrival - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            dispatch[i] = clock()
            counts.sent += 1
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        reporter.cancel()
    finally:
        await pool.aclose()
    wall = time.perf_counter() - start
    if progress is not None:
        progress(1.0, f"{config.label}: {n} done, {counts.errors} errors")
    done = [r for r in results if r is not None]
    require(len(done) == n, "internal error: a request has no result")
    return done, dispatch, counts, wall


def run_load(
    workload: Workload,
    prompts: Sequence[str],
    config: LoadGenConfig,
    progress: ProgressFn | None = None,
    warn: WarnFn | None = None,
) -> LoadResult:
    """Replay ``workload`` against the server of ``config`` with ``prompts[i]`` as request
    ``i``'s prompt and ``max_tokens`` = its output length; returns when every request has
    finished, failed or timed out.

    ``progress(fraction done, description)`` is called a few times a second; ``warn(message)``
    once when the concurrency cap is first reached. Server and network failures become ABORTED
    or REJECTED requests, never exceptions; a prompt count that does not match the workload
    raises :class:`DopdError`.
    """
    require(len(prompts) == len(workload),
            f"{len(prompts)} prompts for a workload of {len(workload)} requests")
    results, dispatch, counts, wall = asyncio.run(_run(workload, prompts, config, progress, warn))
    requested = workload.output_tokens
    ok = np.array([not r.error for r in results])
    state = np.where(ok, int(RequestState.FINISHED), int(RequestState.ABORTED))
    status = np.array([r.status for r in results], dtype=np.int64)
    state[status == 429] = int(RequestState.REJECTED)
    tokens = np.array([r.tokens for r in results], dtype=np.int64)
    output = np.where(ok, np.maximum(tokens, 1), requested)
    first = np.array([r.first_token_s for r in results])
    finish = np.where(ok, [r.last_token_s for r in results], np.nan)
    send = np.array([r.send_s for r in results])
    done = np.array([r.done_s for r in results])
    minus = np.full(len(workload), -1, dtype=np.int64)

    def usage(values: list[int | None]) -> np.ndarray:
        return np.array([-1 if v is None else v for v in values], dtype=np.int64)

    return LoadResult(
        policy=config.label,
        request_id=np.arange(len(workload), dtype=np.int64),
        arrival_s=workload.arrival_s,
        prompt_tokens=workload.prompt_tokens,
        output_tokens=output,
        state=state,
        first_token_s=first,
        finish_s=finish,
        dispatch_s=dispatch,
        send_s=send,
        done_s=done,
        requested_tokens=requested,
        chunks=np.array([r.chunks for r in results], dtype=np.int64),
        server_prompt_tokens=usage([r.prompt_tokens for r in results]),
        server_output_tokens=usage([r.completion_tokens for r in results]),
        http_status=status,
        prefill_instance=minus,
        decode_instance=minus.copy(),
        timeline=client_timeline(workload.arrival_s, send, first, finish, done,
                                 workload.prompt_tokens),
        reason={i: r.error for i, r in enumerate(results) if r.error},
        wall_s=wall,
        end_s=float(done.max()),
        capped=counts.capped,
        max_in_flight=counts.max_in_flight,
    )


def clip_to_context(workload: Workload, max_context: int) -> Workload:
    """The workload with every request fitting ``max_context`` tokens (prompt + output), as
    ``ClipContext(mode="truncate")`` does: prompts capped at ``max_context - 1`` tokens, then
    outputs at what is left. DopdError when ``max_context`` < 2."""
    require(max_context >= 2, f"max context must be >= 2 tokens, got {max_context}")
    prompt = np.minimum(workload.prompt_tokens, max_context - 1)
    output = np.minimum(workload.output_tokens, max_context - prompt)
    return Workload(workload.name, workload.arrival_s, prompt, output, workload.prefix)
