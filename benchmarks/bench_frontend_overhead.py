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
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
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


# ---------------------------------------------------------------------- baseline servers
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache")]


def _chunk(rid: str, text: str, reason: str | None) -> bytes:
    return b"data: " + json.dumps(
        {"id": rid, "object": "text_completion", "created": int(time.time()),
         "model": "dopd-tiny", "choices": [{"index": 0, "text": text, "logprobs": None,
                                            "finish_reason": reason}]},
        separators=(",", ":")).encode() + b"\n\n"


async def _body(receive: Receive) -> bytes:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]],
                   chunks: list[bytes]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    for c in chunks:
        await send({"type": "http.response.body", "body": c, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _lifespan(receive: Receive, send: Send, start: Callable[[], Awaitable[None]],
                    stop: Callable[[], Awaitable[None]]) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await start()
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await stop()
            await send({"type": "lifespan.shutdown.complete"})
            return


class BareApp:
    """Streams one token at once for every completion request."""

    ids = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, self.start, self.stop)
        elif scope["path"] == "/health":
            await _respond(send, 200, [(b"content-type", b"application/json")],
                           [b'{"status":"ok"}'])
        else:
            json.loads(await _body(receive))
            rid = f"cmpl-{next(self.ids)}"
            await _respond(send, 200, SSE_HEADERS, [_chunk(rid, "a", None),
                                                    _chunk(rid, "", "length"),
                                                    b"data: [DONE]\n\n"])

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class DirectApp(BareApp):
    """Forwards every request to emulated dopd workers (round robin) over one ZMQ ROUTER: a
    plain socket read by a loop reader callback that drains it, sends without futures."""

    def __init__(self, instances: int) -> None:
        self.instances = instances
        self.queues: dict[int, asyncio.Queue[list[Any]]] = {}
        self.processes: list[Any] = []
        self.ready: set[bytes] = set()

    async def start(self) -> None:
        import multiprocessing as mp

        import zmq

        from dopd.engine.model import SamplingParams, tiny_tokenizer
        from dopd.serve.engines import EngineSpec
        from dopd.serve.wire import pack, params_to_wire, unpack
        from dopd.serve.worker import WorkerSpec, worker_main
        from dopd.types import Role

        self.zmq, self.pack, self.unpack = zmq, pack, unpack
        self.tokenizer = tiny_tokenizer()
        self.params = params_to_wire(SamplingParams(max_tokens=1))
        self.socket = zmq.Context().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.socket.getsockopt(zmq.FD), self.drain)
        ctx = mp.get_context("spawn")
        engine = EngineSpec("dopd-tiny", Role.MIXED, mode="emulated", step_time_scale=0.0)
        for i in range(self.instances):
            spec = WorkerSpec(i, f"tcp://127.0.0.1:{port}", engine)
            self.processes.append(ctx.Process(target=worker_main, args=(spec,), daemon=True))
            self.processes[-1].start()
        deadline = time.monotonic() + 180
        while len(self.ready) < self.instances:
            if time.monotonic() > deadline:
                raise RuntimeError("workers not ready")
            await asyncio.sleep(0.1)
            self.drain()

    def drain(self) -> None:
        zmq = self.zmq
        while self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            ident, data = self.socket.recv_multipart(zmq.NOBLOCK)
            ev = self.unpack(data)
            if ev["ev"] == "ready":
                self.ready.add(ident)
            elif ev["ev"] == "out":
                for item in ev["items"]:
                    q = self.queues.get(item[0])
                    if q is not None:
                        q.put_nowait(item)

    def send(self, instance: int, msg: dict[str, Any]) -> None:
        self.socket.send_multipart([b"w%d" % instance, self.pack(msg)], self.zmq.NOBLOCK)
        if self.socket.getsockopt(self.zmq.EVENTS) & self.zmq.POLLIN:
            self.loop.call_soon(self.drain)  # the send may have taken the descriptor's edge

    async def stop(self) -> None:
        for i in range(self.instances):
            self.send(i, {"op": "stop"})
        for p in self.processes:
            p.join(10)
            if p.is_alive():
                p.terminate()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await super().__call__(scope, receive, send)
            return
        req = json.loads(await _body(receive))
        rid = next(self.ids)
        queue: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.queues[rid] = queue
        self.send(rid % self.instances, {
            "op": "submit", "rid": rid, "ids": self.tokenizer.encode(req["prompt"]),
            "params": {**self.params, "max_tokens": int(req["max_tokens"])}})
        name = f"cmpl-{rid}"
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        while True:
            _, _, text, _, _, finished, _, _ = await queue.get()
            if text:
                await send({"type": "http.response.body", "body": _chunk(name, text, None),
                            "more_body": True})
            if finished:
                break
        del self.queues[rid]
        await _respond_tail(send, name)


async def _respond_tail(send: Send, name: str) -> None:
    for c in (_chunk(name, "", "length"), b"data: [DONE]\n\n"):
        await send({"type": "http.response.body", "body": c, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def run_baseline(kind: str, port: int, instances: int) -> int:
    import uvicorn

    app = BareApp() if kind == "bare" else DirectApp(instances)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                lifespan="on")
    return 0


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
            if name == "dopd-ref":
                assert reference is not None
                env["PYTHONPATH"] = os.pathsep.join([reference, env.get("PYTHONPATH", "")])
        else:
            cmd = [sys.executable, __file__, "--baseline", name, "--port", str(port),
                   "--instances", str(instances)]
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
    names = [*SERVERS, *(["dopd-ref"] if args.reference_src else [])]
    servers = start_servers(names, args.instances, args.reference_src)
    try:
        dopd_url = f"http://127.0.0.1:{servers['dopd'][1]}"
        for name in names:  # warm-up: connections, code paths, the workers' first steps
            asyncio.run(drive(servers[name][1], args.rate, 1.0, 10**6))
        httpx.post(dopd_url + "/debug/frontend/reset", timeout=10)
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
        label = "dopd's front end" if name == "dopd" else f"{name} ({res['reference_src']})"
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
    ap.add_argument("--baseline", choices=("bare", "direct"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline:
        return run_baseline(args.baseline, args.port, args.instances)
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
