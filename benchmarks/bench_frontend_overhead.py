"""Front-end overhead of ``dopd serve``: the TTFT that its HTTP front end and router add.

Three servers run side by side in one run, under the same uvicorn settings (uvloop and
httptools when installed), driven by the same client with the same seeded Poisson arrivals, in
interleaved rounds (the order rotates) so that machine noise hits all three alike:

* ``dopd``: ``dopd serve --mode emulated --step-time-scale 0`` (workers whose steps take no
  time): the whole front end (FastAPI, validation, tokenization, dispatcher, metrics, SSE);
* ``direct``: a bare ASGI app that forwards each request straight to the same emulated worker
  processes (dopd's worker loop) over one ZMQ ROUTER socket (plain socket, loop reader, no
  futures), round robin, with no routing, validation, metrics or disconnect watch: the least a
  front end over these workers has to do;
* ``bare``: a bare ASGI app that streams one SSE token at once (the HTTP stack and the client).

The two baselines live in ``frontend_baselines.py`` and run as their own processes.
``--plain-channels`` adds ``dopd-plain``, the same server with ``--no-channel-auth`` (worker
channels without ZMQ CURVE), so that what CURVE costs is measured side by side.

"Added by the router" is dopd's client TTFT percentile minus the direct forwarder's, per round
and pooled. dopd's own timestamps (``GET /debug/frontend``: the request at the app to the submit
sent to the worker, and the worker's token event to the SSE chunk written; exact percentiles
over every measured request) give the front end's share from the inside. The client is a raw
asyncio HTTP/1.1 client on uvloop over keep-alive connections (not httpx), in its own process,
so it costs a few tens of microseconds per request; its CPU use is printed. Target (issue 6):
<= 2 ms P50 and <= 10 ms P99 added at 200 requests per second.

    python3 benchmarks/bench_frontend_overhead.py --rate 200 --seconds 10 --rounds 3
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

SERVERS = ["bare", "direct", "dopd"]
REQUEST_TIMEOUT_S = 30.0
TOKEN = re.compile(rb'"text":"[^"]')
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------- client
class Client:
    """Raw HTTP/1.1 keep-alive client for streamed completions; :meth:`one` returns the TTFT
    (request written to the first chunk holding a token). A connection idle for longer than
    ``MAX_IDLE_S`` is not reused (the server may be closing it: uvicorn's keep-alive is 5 s)."""

    MAX_IDLE_S = 2.0

    def __init__(self, port: int) -> None:
        self.port = port
        self.pool: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def reset(self, connections: int) -> None:
        """Close pooled connections and open ``connections`` fresh ones."""
        for _, writer, _ in self.pool:
            writer.close()
        now = time.perf_counter()
        self.pool = [(*await self._connect(), now) for _ in range(connections)]

    async def one(self, n: int) -> float:
        reader = writer = None
        while self.pool:
            reader, writer, last = self.pool.pop()
            if time.perf_counter() - last <= self.MAX_IDLE_S:
                break
            writer.close()
            reader = writer = None
        if reader is None or writer is None:
            reader, writer = await self._connect()
        body = (b'{"model":"dopd-tiny","prompt":"prompt number %d","max_tokens":1,'
                b'"stream":true}' % n)
        head = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        start = time.perf_counter()
        writer.write(head + body)
        status = await reader.readuntil(b"\r\n\r\n")
        if not status.startswith(b"HTTP/1.1 200") or b"chunked" not in status.lower():
            raise RuntimeError(f"unexpected response: {status[:200]!r}")
        ttft = None
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line[:-2].split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            if ttft is None and TOKEN.search(data):
                ttft = time.perf_counter() - start
        self.pool.append((reader, writer, time.perf_counter()))
        if ttft is None:
            raise RuntimeError("no token received")
        return ttft


async def drive(port: int, rate: float, seconds: float, seed: int) -> tuple[np.ndarray, float]:
    """Open-loop Poisson load; (TTFTs in seconds, client CPU share of one core)."""
    client = Client(port)
    await client.reset(16)
    for i in range(20):  # warm-up: code paths of a fresh phase
        await asyncio.wait_for(client.one(i), REQUEST_TIMEOUT_S)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, int(rate * seconds))
    tasks = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    t = wall0
    for i, gap in enumerate(gaps):
        t += gap
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(asyncio.wait_for(client.one(i), REQUEST_TIMEOUT_S)))
    ttft = np.array(await asyncio.gather(*tasks))
    cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    await client.reset(0)
    return ttft, cpu


# ---------------------------------------------------------------------- the run
def start_servers(names: list[str], instances: int,
                  reference: str | None) -> dict[str, tuple[subprocess.Popen[bytes], int]]:
    servers = {}
    for name in names:
        port = free_port()
        env = dict(os.environ)
        if name.startswith("dopd"):
            cmd = [sys.executable, "-m", "dopd.cli.main", "serve", "--port", str(port), "--mode",
                   "emulated", "--step-time-scale", "0", "--instances", str(instances)]
            if name == "dopd-plain":
                cmd.append("--no-channel-auth")
            if name == "dopd-ref":
                assert reference is not None
                env["PYTHONPATH"] = os.pathsep.join([reference, env.get("PYTHONPATH", "")])
        else:
            cmd = [sys.executable, str(Path(__file__).with_name("frontend_baselines.py")), name,
                   "--port", str(port), "--instances", str(instances)]
        servers[name] = (subprocess.Popen(cmd, start_new_session=True, env=env), port)
    deadline = time.monotonic() + 180
    for name, (proc, port) in servers.items():
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server {name} did not start")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
    return servers


def stop_servers(servers: dict[str, tuple[subprocess.Popen[bytes], int]]) -> None:
    for proc, _ in servers.values():
        proc.send_signal(signal.SIGTERM)
    for proc, _ in servers.values():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def pct(ms: np.ndarray) -> dict[str, float]:
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 99)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = [*SERVERS, *(["dopd-ref"] if args.reference_src else []),
             *(["dopd-plain"] if args.plain_channels else [])]
    servers = start_servers(names, args.instances, args.reference_src)
    try:
        dopd_url = f"http://127.0.0.1:{servers['dopd'][1]}"
        for name in names:  # warm-up: connections, code paths, the workers' first steps
            asyncio.run(drive(servers[name][1], args.rate, 1.0, 10**6))
        httpx.post(dopd_url + "/debug/frontend/reset", json={}, timeout=10)
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            this: dict[str, Any] = {}
            for name in order:
                ttft, cpu = asyncio.run(drive(servers[name][1], args.rate, args.seconds,
                                              args.seed + r))
                this[name] = {"ttft_ms": ttft * 1000, "client_cpu": cpu}
                print(f"  round {r + 1} {name:8s} P50 {np.percentile(ttft, 50) * 1e3:6.2f} ms "
                      f" P99 {np.percentile(ttft, 99) * 1e3:7.2f} ms  client CPU {cpu:.0%}",
                      flush=True)
            rounds.append(this)
        inside = httpx.get(dopd_url + "/debug/frontend", timeout=10).json()
    finally:
        stop_servers(servers)
    pooled = {name: pct(np.concatenate([r[name]["ttft_ms"] for r in rounds])) for name in names}
    per_round = [{name: pct(r[name]["ttft_ms"]) for name in names} for r in rounds]
    added = {name: {"pooled": {q: pooled[name][q] - pooled["direct"][q] for q in ("p50", "p99")},
                    "per_round": [{q: pr[name][q] - pr["direct"][q] for q in ("p50", "p99")}
                                  for pr in per_round]}
             for name in names if name.startswith("dopd")}
    return {"rate_rps": args.rate, "seconds_per_round": args.seconds, "rounds": args.rounds,
            "instances": args.instances, "cpus": os.cpu_count(),
            "reference_src": args.reference_src,
            "client_cpu_max": max(r[n]["client_cpu"] for r in rounds for n in names),
            "client_ttft_ms": pooled, "client_ttft_ms_per_round": per_round,
            "added_over_direct_ms": added, "server_side": inside}


def report(res: dict[str, Any]) -> None:
    print(f"\nfront-end overhead at {res['rate_rps']:g} req/s, {res['rounds']} rounds x "
          f"{res['seconds_per_round']:g} s per server, {res['instances']} zero-time emulated "
          f"worker(s), {res['cpus']} CPUs shared by client, servers and workers "
          f"(raw asyncio HTTP/1.1 client, at most {res['client_cpu_max']:.0%} of a core)")
    print("  client TTFT (ms, all rounds)    P50      P90      P99")
    for name, p in res["client_ttft_ms"].items():
        print(f"    {name:28s}{p['p50']:7.2f}  {p['p90']:7.2f}  {p['p99']:7.2f}")
    for name, a in res["added_over_direct_ms"].items():
        label = {"dopd": "dopd's front end", "dopd-plain": "dopd-plain (no CURVE)"}.get(
            name, f"{name} ({res['reference_src']})")
        print(f"  added by {label} ({name} - direct): P50 {a['pooled']['p50']:+.2f} ms, P99 "
              f"{a['pooled']['p99']:+.2f} ms" + ("   (target P50 <= 2, P99 <= 10)"
                                                 if name == "dopd" else ""))
        print("    per round: " + ", ".join(f"P50 {s['p50']:+.2f} / P99 {s['p99']:+.2f}"
                                            for s in a["per_round"]))
    s = res["server_side"]
    print(f"  inside dopd, per request, exact ({s['requests']} requests, event loop "
          f"{s.get('event_loop', '?')}):")
    for key, label in (("arrival_to_submit_ms", "request at the app -> submit sent"),
                       ("event_to_write_ms", "token event -> SSE chunk written"),
                       ("front_end_ms", "front end's own share (sum)")):
        p = s[key]
        print(f"    {label:36s} P50 {p['p50']:.3f} ms  P99 {p['p99']:.3f} ms  max "
              f"{p['max']:.3f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=10.0, help="per server and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--reference-src", default=None, metavar="DIR",
                    help="also run the dopd package found in DIR (e.g. an older checkout's "
                         "src/) as server dopd-ref, for a before/after in the same run")
    ap.add_argument("--plain-channels", action="store_true",
                    help="also run dopd-plain: dopd serve --no-channel-auth (no ZMQ CURVE)")
    args = ap.parse_args()
    if args.rate <= 0 or args.seconds <= 0 or args.rounds < 1 or args.instances < 1:
        ap.error("--rate and --seconds must be > 0, --rounds and --instances >= 1")
    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    res = run(args)
    report(res)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
