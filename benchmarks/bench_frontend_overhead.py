"""Front-end overhead of ``dopd serve``: TTFT added by the HTTP front end and router.

Starts ``dopd serve`` with emulated workers whose steps take no time (``--step-time-scale 0``),
sends an open-loop Poisson stream of streamed completions (``max_tokens`` 1) at ``--rate``
requests per second for ``--seconds`` seconds from an asyncio httpx client, and prints the
client-side TTFT percentiles (everything between the client and the first token: HTTP parsing,
tokenization, routing, the ZMQ hop, the worker loop and back) and the front end's own
arrival-to-submit time from its ``dopd_router_seconds`` histogram. Target (issue 6): <= 2 ms P50
and <= 10 ms P99 at 200 requests per second.

    python3 benchmarks/bench_frontend_overhead.py --rate 200 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def one(client: httpx.AsyncClient, url: str, prompt: str) -> float:
    body = {"model": "dopd-tiny", "prompt": prompt, "max_tokens": 1, "stream": True}
    start = time.perf_counter()
    ttft = None
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if ttft is None and line.startswith("data: {") and '"text":""' not in line:
                ttft = time.perf_counter() - start
    if ttft is None:
        raise RuntimeError("no token received")
    return ttft


async def drive(url: str, rate: float, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    gaps = rng.exponential(1.0 / rate, n)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=500)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for _ in range(20):  # warm-up: connections and code paths
            await one(client, url, "warm up")
        tasks = []
        t = time.perf_counter()
        for i, gap in enumerate(gaps):
            t += gap
            delay = t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(client, url, f"prompt number {i}")))
        return np.array(await asyncio.gather(*tasks))


def router_quantiles(metrics: str) -> dict[str, float]:
    """P50/P99 upper bucket bounds of dopd_router_seconds."""
    buckets = [(float(m.group(1)), float(m.group(2))) for m in re.finditer(
        r'^dopd_router_seconds_bucket\{le="([0-9.e+-]+)"\} ([0-9.e+]+)$', metrics, re.M)]
    total = buckets[-1][1] if buckets else 0.0
    out = {}
    for q in (0.5, 0.99):
        out[f"p{int(q * 100)}_le_s"] = next((le for le, c in buckets if c >= q * total),
                                            float("inf"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dopd.cli.main", "serve", "--port", str(port), "--mode",
         "emulated", "--step-time-scale", "0", "--instances", str(args.instances)],
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        ttft = asyncio.run(drive(base + "/v1/completions", args.rate, args.seconds, args.seed))
        router = router_quantiles(httpx.get(base + "/metrics").text)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    ms = ttft * 1000
    result = {"rate_rps": args.rate, "requests": len(ms), "cpus": os.cpu_count(),
              "ttft_p50_ms": float(np.percentile(ms, 50)),
              "ttft_p90_ms": float(np.percentile(ms, 90)),
              "ttft_p99_ms": float(np.percentile(ms, 99)),
              "router_p50_ms_le": router["p50_le_s"] * 1000,
              "router_p99_ms_le": router["p99_le_s"] * 1000}
    print(f"front-end overhead at {args.rate:g} req/s ({len(ms)} requests, zero-time workers, "
          f"{os.cpu_count()} CPUs shared with the client):")
    print(f"  client TTFT  P50 {result['ttft_p50_ms']:.2f} ms  P90 {result['ttft_p90_ms']:.2f} "
          f"ms  P99 {result['ttft_p99_ms']:.2f} ms   (target P50 <= 2, P99 <= 10)")
    print(f"  router (arrival -> submit) P50 <= {result['router_p50_ms_le']:.2f} ms, "
          f"P99 <= {result['router_p99_ms_le']:.2f} ms (histogram bucket bounds)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
