"""Fuzz a real ``dopd serve``: hypothesis-generated requests over both completion endpoints.

Two in seven are valid requests with every field anywhere in its range (tiny ``top_p`` and
``temperature``, seeds at the 64-bit ends, any ``top_k``, stop strings, streams), two in seven
are valid but for one field (out of range, NaN, past 64 bits or of a wrong type); the others
mix valid fields with extremes (integers past 64 bits, NaN and infinities, huge
``max_tokens``), wrong types, unknown fields, unicode, empty and token-id prompts, streams,
bodies that are not JSON or not objects, and prompts from a few KiB up to past the body limit.
They are sent concurrently while a probe times ``GET /health`` every 50 ms from its own
process. Counted: answers by status, 5xx answers and 5xx error events inside streams, worker
crashes (restarts or changed worker pids in ``/v1/cluster``), transport errors, and the
probe's worst latency (an event-loop stall shows there).

    python benchmarks/bench_fuzz.py                      # 10,000 emulated + 1,000 real-mode
    python benchmarks/bench_fuzz.py --requests 2000 --real-requests 300

It starts one emulated deployment (2 workers, steps take no time) and one real-mode
disaggregated deployment of dopd-tiny (the real sampler, on both sides of the KV handoff, sees
every generated parameter), prints one row per deployment (and, on the emulated one, the
answer time of a few oversized prompts sent alone, with the probe's worst latency meanwhile),
and exits 1 if any request got a 5xx, a worker crashed or the probe stalled past
``--max-stall`` seconds. :func:`fuzz` is what ``tests/serve/test_fuzz.py`` runs in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

MODEL = "dopd-tiny"
BODY_LIMIT = 8 * 2**20
HUGE_INTS = [2**63, 2**64, 2**64 - 1, -(2**63), -(2**63) - 1, 2**200, -(2**200), 10**30]
TINY = [1e-46, 1e-45, 5e-324, 1e-300, 1e-38]
ODD = [None, True, "", "1", "abc", [], [1], {}, {"a": 1}, -1, 0, 1.5, "NaN"]

ints = st.one_of(st.integers(-5, 300), st.sampled_from(HUGE_INTS), st.integers())
floats = st.one_of(st.floats(-3, 3), st.sampled_from(TINY), st.floats(allow_nan=True))
odd = st.sampled_from(ODD)
text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "hello", "\u00e9\u4e2d\U0001f600", "\x00\x01", "<|bos|>", "\ufffd"]),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "\u00e9", "ab "]),
              st.sampled_from([1000, 5000, 20000, 40000])),
)
token_ids = st.lists(st.one_of(st.integers(0, 300), st.sampled_from([-1, 2**64, 10**9])),
                     max_size=20)
prompt = st.one_of(text, token_ids, st.lists(text, max_size=2), st.lists(token_ids, max_size=2),
                   odd)
stop = st.one_of(st.none(), text, st.lists(text, max_size=6), odd)
message = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["system", "user", "assistant", "developer", "tool"]),
                       odd),
     "content": st.one_of(text, st.none(),
                          st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text",
                                                                                   "image"]),
                                                          "text": text}), max_size=2), odd)})
SAMPLING: dict[str, Any] = {
    "max_tokens": st.one_of(st.integers(1, 24), ints, odd),
    "temperature": st.one_of(st.floats(0, 2), st.sampled_from(TINY), floats, odd),
    "top_p": st.one_of(st.floats(0, 1), st.sampled_from(TINY), floats, odd),
    "top_k": st.one_of(st.integers(-2, 60), ints, odd),
    "seed": st.one_of(ints, odd),
    "n": st.one_of(st.integers(0, 3), ints, odd),
    "stop": stop,
    "stream": st.one_of(st.booleans(), odd),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), odd),
    "ignore_eos": st.one_of(st.booleans(), odd),
    "return_token_ids": st.one_of(st.booleans(), odd),
    "presence_penalty": st.one_of(st.just(0.0), floats, odd),
    "frequency_penalty": st.one_of(st.just(0.0), floats, odd),
    "repetition_penalty": st.one_of(st.just(1.0), floats, odd),
    "min_p": st.one_of(st.just(0.0), floats, odd),
    "logit_bias": st.one_of(st.just({}), st.dictionaries(st.text(max_size=3), floats,
                                                         max_size=2), odd),
    "logprobs": st.one_of(st.none(), ints, st.booleans(), odd),
    "user": st.one_of(text, odd),
    "unknown_field": st.one_of(ints, text, odd),
}
_sampling = st.fixed_dictionaries({}, optional=SAMPLING)
_model = st.one_of(st.just(MODEL), st.just(MODEL), st.just(MODEL), text, odd)
completion = st.builds(lambda base, m, p: {**base, "model": m, "prompt": p},
                       _sampling, _model, prompt)
chat = st.builds(lambda base, m, msgs, mct: {**base, "model": m, "messages": msgs,
                                             **({} if mct is None else
                                                {"max_completion_tokens": mct})},
                 _sampling, _model, st.one_of(st.lists(message, max_size=3), odd),
                 st.one_of(st.none(), st.integers(1, 24), ints))

# requests a server should serve: every field in its valid range, extremes included
small_text = st.text(min_size=1, max_size=30)
VALID: dict[str, Any] = {
    "temperature": st.one_of(st.floats(0, 2), st.sampled_from([*TINY, 0.0, 2.0])),
    "top_p": st.one_of(st.floats(5e-324, 1), st.sampled_from([*TINY, 1.0])),
    "top_k": st.one_of(st.integers(-1, 100), st.just(2**31 - 1)),
    "seed": st.one_of(st.integers(-(2**63), 2**64 - 1), st.sampled_from([2**64 - 1, -(2**63)])),
    "n": st.just(1),
    "stop": st.one_of(st.none(), small_text, st.lists(small_text, max_size=4)),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "ignore_eos": st.booleans(),
    "return_token_ids": st.booleans(),
    "presence_penalty": st.just(0.0),
    "min_p": st.just(0.0),
    "user": small_text,
    "unknown_field": st.one_of(ints, text, odd),
}
_valid = st.builds(lambda base, mt: {**base, "model": MODEL, "max_tokens": mt},
                   st.fixed_dictionaries({}, optional=VALID), st.integers(1, 16))
valid_prompt = st.one_of(st.text(min_size=1, max_size=200),
                         st.lists(st.integers(0, 255), min_size=1, max_size=60),
                         st.builds(lambda c: c * 1500, st.sampled_from(["a", "\u00e9"])))
valid_completion = st.builds(lambda base, p: {**base, "prompt": p}, _valid, valid_prompt)
valid_chat = st.builds(
    lambda base, msgs: {**base, "messages": msgs}, _valid,
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                    "content": st.text(max_size=200)}), min_size=1, max_size=3))
# a valid request with one field out of its range or of a wrong type (no other error hides it)
_one_bad = st.one_of(*(st.tuples(st.just(name), strategy) for name, strategy in SAMPLING.items()))
one_bad_completion = st.builds(lambda b, kv: {**b, kv[0]: kv[1]}, valid_completion, _one_bad)
one_bad_chat = st.builds(lambda b, kv: {**b, kv[0]: kv[1]}, valid_chat, _one_bad)


@dataclass(frozen=True)
class FuzzRequest:
    """One request: endpoint path and raw body bytes."""

    path: str
    body: bytes


def _encode(obj: Any) -> bytes:
    # NaN and infinities go out as JSON5-style literals (Python's json writes them)
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _raw(kind: str, filler: int) -> bytes:
    """Bodies that are not a valid request object."""
    return {
        "not-json": b"{not json",
        "array": b"[1, 2, 3]",
        "string": b'"hello"',
        "empty": b"",
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "bad-utf8": b'{"model": "dopd-tiny", "prompt": "\xff\xfe"}',
        "lone-surrogate": b'{"model": "dopd-tiny", "prompt": "\\ud800 x"}',
        "big-prompt": b'{"model": "dopd-tiny", "prompt": "' + b"x" * filler + b'"}',
        "over-limit": b'{"model": "dopd-tiny", "prompt": "' + b"y" * (BODY_LIMIT + 10) + b'"}',
        "huge-number": b'{"model": "dopd-tiny", "prompt": "x", "seed": 1' + b"0" * 5000 + b"}",
    }[kind]


request = st.one_of(
    st.builds(lambda b: FuzzRequest("/v1/completions", _encode(b)), valid_completion),
    st.builds(lambda b: FuzzRequest("/v1/chat/completions", _encode(b)), valid_chat),
    st.builds(lambda b: FuzzRequest("/v1/completions", _encode(b)), one_bad_completion),
    st.builds(lambda b: FuzzRequest("/v1/chat/completions", _encode(b)), one_bad_chat),
    st.builds(lambda b: FuzzRequest("/v1/completions", _encode(b)), completion),
    st.builds(lambda b: FuzzRequest("/v1/chat/completions", _encode(b)), chat),
    st.builds(lambda p, k, n: FuzzRequest(p, _raw(k, n)),
              st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
              st.sampled_from(["not-json", "array", "string", "empty", "deep", "bad-utf8",
                               "lone-surrogate", "big-prompt", "over-limit", "huge-number"]),
              st.sampled_from([10_000, 2**20, 5 * 2**20])),
)


def generate(n: int, seed: int = 0) -> list[FuzzRequest]:
    """``n`` requests drawn by hypothesis from :data:`request` (the same ones for a seed)."""
    out: list[FuzzRequest] = []

    @hypothesis_seed(seed)
    @settings(max_examples=n, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(request)
    def collect(req: FuzzRequest) -> None:
        out.append(req)

    while len(out) < n:  # hypothesis may stop early once it has seen enough distinct inputs
        collect()
        seed += 1
    # raw bodies over the limit are large; a few are enough
    big = [r for r in out if len(r.body) > 2**20]
    keep = {id(r) for r in big[:max(4, n // 500)]}
    return [r for r in out[:n] if len(r.body) <= 2**20 or id(r) in keep]


@dataclass
class FuzzReport:
    """What one fuzz run saw."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    stream_errors: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    crashes: int = 0
    probe_max_s: float = 0.0
    probes: int = 0
    seconds: float = 0.0
    examples_5xx: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        return (sum(v for k, v in self.statuses.items() if k >= 500)
                + sum(v for k, v in self.stream_errors.items() if k >= 500))

    def row(self, label: str) -> str:
        ok = sum(v for k, v in self.statuses.items() if k < 300)
        four = sum(v for k, v in self.statuses.items() if 400 <= k < 500)
        return (f"{label:<10} {self.sent:>7} {ok:>6} {four:>6} {self.server_errors:>5} "
                f"{self.transport_errors:>9} {self.crashes:>7} {self.probe_max_s * 1000:>10.0f} "
                f"{self.seconds:>7.1f}")


HEADER = (f"{'server':<10} {'requests':>7} {'2xx':>6} {'4xx':>6} {'5xx':>5} "
          f"{'transport':>9} {'crashes':>7} {'probe max':>7} {'seconds':>7}\n"
          f"{'':<10} {'':>7} {'':>6} {'':>6} {'':>5} {'errors':>9} {'':>7} {'(ms)':>10}")


def _workers(url: str) -> dict[int, tuple[int | None, int]]:
    state = httpx.get(url + "/v1/cluster", timeout=30).json()
    return {i["id"]: (i["pid"], i["restarts"]) for i in state["instances"]}


async def _send(client: httpx.AsyncClient, req: FuzzRequest, report: FuzzReport) -> None:
    try:
        async with client.stream("POST", req.path, content=req.body,
                                  headers={"content-type": "application/json"}) as resp:
            report.statuses[resp.status_code] += 1
            body = b""
            async for chunk in resp.aiter_bytes():
                body += chunk
            if resp.status_code >= 500 and len(report.examples_5xx) < 5:
                report.examples_5xx.append(f"{resp.status_code} {req.body[:200]!r} -> "
                                           f"{body[:300]!r}")
            if resp.headers.get("content-type", "").startswith("text/event-stream"):
                _stream_errors(body, req, report)
    except httpx.HTTPError as exc:
        report.transport_errors += 1
        if len(report.examples_5xx) < 5:
            report.examples_5xx.append(f"transport {type(exc).__name__} {req.body[:200]!r}")


def _stream_errors(body: bytes, req: FuzzRequest, report: FuzzReport) -> None:
    for line in body.split(b"\n"):
        if not line.startswith(b"data: {\"error\""):
            continue
        err = json.loads(line[6:])["error"]
        status = 500 if err.get("type") == "server_error" else 400
        if "shutting down" in err.get("message", "") or "unavailable" in err.get("message", ""):
            status = 503
        report.stream_errors[status] += 1
        if status >= 500 and len(report.examples_5xx) < 5:
            report.examples_5xx.append(f"stream error {err} for {req.body[:200]!r}")


_PROBE = """
import select, sys, time, httpx
worst, n = 0.0, 0
with httpx.Client(base_url=sys.argv[1], timeout=60) as client:
    client.get("/health")
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], 0.05)[0]:
        t = time.perf_counter()
        client.get("/health")
        worst, n = max(worst, time.perf_counter() - t), n + 1
print(worst, n)
"""


class Probe:
    """Times ``GET /health`` every 50 ms from its own process (so the load generator's own
    pauses do not count) until the ``with`` block ends; then fills ``report``'s probe fields."""

    def __init__(self, url: str, report: FuzzReport) -> None:
        self.url, self.report = url, report

    def __enter__(self) -> Probe:
        self.proc = subprocess.Popen([sys.executable, "-c", _PROBE, self.url],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the probe did not start")
        time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self.proc.communicate("stop\n", timeout=120)
        worst, n = out.split()[-2:]
        self.report.probe_max_s, self.report.probes = float(worst), int(n)


async def _run(url: str, reqs: list[FuzzRequest], concurrency: int,
               report: FuzzReport) -> None:
    queue: asyncio.Queue[FuzzRequest] = asyncio.Queue()
    for r in reqs:
        queue.put_nowait(r)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                await _send(client, queue.get_nowait(), report)
                report.sent += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def fuzz(url: str, n: int, *, seed: int = 0, concurrency: int = 16) -> FuzzReport:
    """Send ``n`` generated requests to the server at ``url``; see the module docstring."""
    reqs = generate(n, seed)
    before = _workers(url)
    report = FuzzReport()
    t0 = time.perf_counter()
    with Probe(url, report):
        asyncio.run(_run(url, reqs, concurrency, report))
    report.seconds = time.perf_counter() - t0
    after = _workers(url)
    report.crashes = sum(1 for iid, (pid, restarts) in after.items()
                         if iid not in before or before[iid] != (pid, restarts))
    return report


BIG = [("10 MB prompt (over the body limit)", "/v1/completions", "prompt", 10 * 2**20),
       ("7 MB prompt", "/v1/completions", "prompt", 7 * 2**20),
       ("1 MB chat message", "/v1/chat/completions", "messages", 2**20),
       ("100,000 empty chat messages", "/v1/chat/completions", "many", 100_000)]


def big_prompts(url: str) -> list[tuple[str, int, float, float]]:
    """(what, status, seconds, probe max seconds) for each of :data:`BIG`, one at a time."""
    rows = []
    for what, path, kind, size in BIG:
        body: dict[str, Any] = {"model": MODEL, "max_tokens": 4}
        if kind == "prompt":
            body["prompt"] = "x" * size
        elif kind == "messages":
            body["messages"] = [{"role": "user", "content": "y" * size}]
        else:
            body["messages"] = [{"role": "user", "content": ""}] * size
        raw = json.dumps(body).encode()
        report = FuzzReport()

        with Probe(url, report):
            t = time.perf_counter()
            status = httpx.post(url + path, content=raw, timeout=120,
                                headers={"content-type": "application/json"}).status_code
            took = time.perf_counter() - t
        rows.append((what, status, took, report.probe_max_s))
    return rows


def _start(args: list[str], timeout_s: float = 180.0) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "dopd.cli.main", "serve", "--port",
                             str(port), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"dopd serve {' '.join(args)} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("dopd serve did not become healthy in time")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


EMULATED = ["--instances", "2", "--policy", "colocated", "--mode", "emulated",
            "--step-time-scale", "0"]
REAL = ["--instances", "2", "--policy", "static:1:1", "--mode", "real", "--device", "cpu"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10_000, help="to the emulated server")
    ap.add_argument("--real-requests", type=int, default=1_000, help="to the real-mode server")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-stall", type=float, default=1.0, help="seconds the probe may take")
    args = ap.parse_args()
    print(HEADER)
    failed = False
    for label, server_args, n in (("emulated", EMULATED, args.requests),
                                  ("real", REAL, args.real_requests)):
        if n <= 0:
            continue
        proc, url = _start(server_args)
        try:
            report = fuzz(url, n, seed=args.seed, concurrency=args.concurrency)
            big = big_prompts(url) if label == "emulated" else []
        finally:
            _stop(proc)
        print(report.row(label), flush=True)
        for what, status, took, probe_max in big:
            print(f"  {what}: HTTP {status} in {took * 1000:.0f} ms, probe max "
                  f"{probe_max * 1000:.0f} ms")
            failed = failed or status >= 500 or probe_max > args.max_stall
        for line in report.examples_5xx:
            print(f"  {line}")
        bad = (report.server_errors or report.crashes or report.transport_errors
               or report.probe_max_s > args.max_stall or not math.isfinite(report.probe_max_s))
        failed = failed or bool(bad)
    print("verdict:", "FAIL" if failed else
          f"0 x 5xx, 0 crashes, probe under {args.max_stall:g} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
