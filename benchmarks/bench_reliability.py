"""Reliability figures of ``dopd serve`` on real processes (emulated workers): overload, a
frozen worker, poison requests, a killed decode worker, SIGTERM with open streams, slow
clients. Each check starts its own server and prints one line of figures; README's
"Reliability" table quotes them.

    python3 benchmarks/bench_reliability.py                 # every check, about 5 min on 2 cores
    python3 benchmarks/bench_reliability.py --check overload --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from dopd.serve.faults import CRASH_MARKER

EMULATED = ("--mode", "emulated", "--step-time-scale", "4")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A ``dopd serve`` process on a free port, its output in a temporary file."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dopd.cli.main", "serve", "--port", str(self.port), *args],
            stdout=self.log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dopd serve exited: {self.output()[-2000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("dopd serve did not become ready")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def cluster(self) -> dict[str, Any]:
        return httpx.get(self.url + "/v1/cluster", timeout=30).json()  # type: ignore[no-any-return]

    def ready(self) -> bool:
        return httpx.get(self.url + "/ready", timeout=30).status_code == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@contextmanager
def server(*args: str) -> Iterator[Server]:
    s = Server(*args)
    try:
        yield s
    finally:
        s.stop()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def stream(url: str, prompt: str | list[int], max_tokens: int) -> dict[str, Any]:
    """One streamed completion: status, tokens, the error it ended with, ``[DONE]`` seen."""
    body = {"model": "dopd-tiny", "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    out: dict[str, Any] = {"status": 0, "tokens": None, "error": None, "done": False}
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
            out["status"] = r.status_code
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    out["done"] = True
                elif line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        out["error"] = chunk["error"]["message"]
                    elif chunk.get("usage"):
                        out["tokens"] = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        out["error"] = type(exc).__name__
    return out


def wait_for(check: Callable[[], bool], timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(0.05)
    return float("inf")


# ---------------------------------------------------------------------- checks
def check_overload(args: argparse.Namespace) -> None:
    per_instance = 8
    bound = 2 * per_instance
    for policy in ("colocated", "static:1:1", "dopd"):
        with server("--instances", "2", "--policy", policy, *EMULATED,
                    "--max-queued-requests", str(per_instance)) as s:
            pid = s.proc.pid
            asyncio.run(blast(s.url, 40, 20))
            rss0, peak_rss, peak = rss_mb(pid), [0.0], [0]
            done = threading.Event()
            t = threading.Thread(target=_watch, args=(s, done, peak, peak_rss), daemon=True)
            t.start()
            t0 = time.monotonic()
            responses = asyncio.run(blast(s.url, args.requests, 10 * bound))
            took = time.monotonic() - t0
            done.set()
            t.join(5)
            codes = [r.status_code for r in responses]
            r429 = [r for r in responses if r.status_code == 429]
            with_ra = sum(1 for r in r429 if r.headers.get("retry-after", "").isdigit())
            others = len(codes) - codes.count(200) - len(r429)
            print(f"overload {policy:11s}: {len(codes)} requests at concurrency {10 * bound} "
                  f"(10x the bound of {bound} in flight) in {took:.1f} s: "
                  f"{codes.count(200)} served, {len(r429)} x 429 ({with_ra} with Retry-After), "
                  f"{others} other; peak in flight {peak[0]}; front-end RSS {rss0:.0f} -> "
                  f"peak {peak_rss[0]:.0f} MB", flush=True)


def _watch(s: Server, done: threading.Event, peak: list[int], peak_rss: list[float]) -> None:
    while not done.is_set():
        peak[0] = max(peak[0], s.cluster()["in_flight"])
        peak_rss[0] = max(peak_rss[0], rss_mb(s.proc.pid))
        time.sleep(0.1)


async def blast(url: str, n: int, concurrency: int) -> list[httpx.Response]:
    """``n`` short completions at most ``concurrency`` at a time; every response."""
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        async def one(i: int) -> httpx.Response:
            async with sem:
                return await client.post(url + "/v1/completions", json={
                    "model": "dopd-tiny", "prompt": f"overload {i} " + "x" * (i % 50),
                    "max_tokens": 30, "ignore_eos": True})
        return await asyncio.gather(*(one(i) for i in range(n)))


def check_frozen(args: argparse.Namespace) -> None:
    stall = 2.0
    with server("--instances", "2", "--policy", "colocated", *EMULATED,
                "--worker-stall-timeout", str(stall)) as s, ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(stream, s.url, f"frozen {i}", 60) for i in range(16)]
        time.sleep(1.5)
        victim = s.cluster()["instances"][0]
        os.kill(victim["pid"], signal.SIGSTOP)
        try:
            detected = wait_for(lambda: s.cluster()["instances"][0]["state"] != "active", 60)
            results = [f.result() for f in futures]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim["pid"], signal.SIGKILL)
        ok = sum(1 for r in results if r["tokens"] == 60 and r["done"])
        print(f"frozen worker: SIGSTOP with {victim['load']} requests on it, detected after "
              f"{detected:.2f} s (stall timeout {stall:g} s); {ok} of {len(results)} streams "
              "finished whole", flush=True)


def check_poison(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "serve.toml"
        cfg.write_text("[serve]\nrestart_backoff_s = 0.1\nrestart_backoff_max_s = 1.0\n")
        with server("--config", str(cfg), "--instances", "2", "--policy", "colocated",
                    *EMULATED, "--fault-injection") as s, ThreadPoolExecutor(20) as pool:
            innocents = [pool.submit(stream, s.url, f"innocent {i}", 40) for i in range(8)]
            time.sleep(1.0)
            poison = stream(s.url, [*CRASH_MARKER, 7], 40)
            ok = sum(1 for f in innocents if f.result()["tokens"] == 40)
            answer = poison["error"] or f"HTTP {poison['status']}, {poison['tokens']} tokens"
            print(f"poison request: ended with {answer!r}; {ok} of 8 innocent "
                  "streams batched with it finished whole", flush=True)
            wait_for(s.ready, 120)
            before = sum(i["restarts"] for i in s.cluster()["instances"])
            t0 = time.monotonic()
            codes = list(pool.map(lambda i: _crash_until_final(s.url, i), range(100)))
            took = time.monotonic() - t0
            restarts = sum(i["restarts"] for i in s.cluster()["instances"]) - before
            back = wait_for(s.ready, 120)
            after = [stream(s.url, f"after {i}", 6) for i in range(10)]
            ok = sum(1 for r in after if r["tokens"] == 6)
            print(f"100 crashing requests (6 distinct): {codes.count(500)} x 500 in {took:.1f} "
                  f"s, {restarts} worker restarts; ready again {back:.1f} s later, {ok} of 10 "
                  "requests then served", flush=True)


def _crash_until_final(url: str, i: int) -> int:
    deadline = time.monotonic() + 120
    while True:
        r = httpx.post(url + "/v1/completions", json={
            "model": "dopd-tiny", "prompt": [*CRASH_MARKER, 10 + i % 6], "max_tokens": 8},
            timeout=120)
        if r.status_code != 503 or time.monotonic() > deadline:
            return r.status_code
        time.sleep(min(1.0, float(r.headers.get("retry-after", 1))))


def check_decode_kill(args: argparse.Namespace) -> None:
    with server("--instances", "2", "--policy", "static:1:1", *EMULATED) as s, \
            ThreadPoolExecutor(30) as pool:
        roles = {i["role"]: i for i in s.cluster()["instances"]}
        futures = [pool.submit(stream, s.url, f"pd {i}", 40) for i in range(13)]
        time.sleep(1.5)
        os.kill(roles["decode"]["pid"], signal.SIGKILL)
        time.sleep(0.3)
        during = [pool.submit(stream, s.url, f"during {i}", 10) for i in range(10)]
        cut = [f.result() for f in futures]
        new = [f.result() for f in during]
        print(f"killed decode worker: {sum(r['tokens'] == 40 for r in cut)} of {len(cut)} open "
              f"streams finished whole; {sum(r['tokens'] == 10 for r in new)} of {len(new)} "
              "new requests during its restart served (by the prefill worker)", flush=True)
    with server("--instances", "2", "--policy", "static:1:1", *EMULATED,
                "--kv-timeout", "60") as s, ThreadPoolExecutor(41) as pool:
        roles = {i["role"]: i for i in s.cluster()["instances"]}
        futures = [pool.submit(stream, s.url, "p" * (50 + 20 * i), 20) for i in range(41)]
        time.sleep(0.8)
        os.kill(roles["prefill"]["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        res = [f.result() for f in futures]
        print(f"killed prefill worker during KV transfers: {sum(r['tokens'] == 20 for r in res)}"
              f" of {len(res)} requests finished whole, the last {time.monotonic() - t0:.1f} s "
              "after the kill (KV timeout 60 s)", flush=True)


def check_sigterm(args: argparse.Namespace) -> None:
    grace = 2.0
    s = Server("--instances", "2", "--policy", "colocated", *EMULATED, "--shutdown-grace",
               str(grace))
    try:
        with ThreadPoolExecutor(80) as pool:
            futures = [pool.submit(stream, s.url, f"long {i}", 2000) for i in range(79)]
            time.sleep(2.0)
            t0 = time.monotonic()
            s.proc.send_signal(signal.SIGTERM)
            rc = s.proc.wait(grace + 60)
            took = time.monotonic() - t0
            results = [f.result() for f in futures]
    finally:
        log = s.output()
        s.stop()
    clean = sum(1 for r in results if r["done"] and r["error"] and "shutting down" in r["error"])
    print(f"SIGTERM, grace {grace:g} s: exit {rc} after {took:.1f} s; {clean} of {len(results)} "
          f"open streams ended with an error event and [DONE]; tracebacks in the log: "
          f"{log.count('Traceback')}", flush=True)


def check_slowloris(args: argparse.Namespace) -> None:
    timeout = 5.0
    with server("--instances", "1", "--policy", "colocated", *EMULATED,
                "--http-timeout", str(timeout)) as s:
        kinds = [b"", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n",
                 b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-length: 1000\r\n\r\n{"]
        t0 = time.monotonic()
        conns = []
        for i in range(600):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            if kinds[i % 3]:
                c.sendall(kinds[i % 3])
            c.setblocking(False)
            conns.append(c)
        opened = time.monotonic() - t0
        r = httpx.post(s.url + "/v1/completions", json={"model": "dopd-tiny", "prompt": "hi",
                                                        "max_tokens": 3}, timeout=30)
        open_, last = list(conns), 0.0
        while open_ and time.monotonic() - t0 < 120:
            still = []
            for c in open_:
                try:
                    if c.recv(4096) != b"":
                        still.append(c)
                except BlockingIOError:
                    still.append(c)
                except OSError:
                    pass
            if len(still) < len(open_):
                last = time.monotonic() - t0
            open_ = still
            time.sleep(0.05)
        for c in conns:
            c.close()
        print(f"slow clients: 600 idle/partial-header/partial-body connections (opened in "
              f"{opened:.1f} s), {600 - len(open_)} closed by the server, the last {last:.1f} s "
              f"after the first opened (--http-timeout {timeout:g}); a real request meanwhile: "
              f"HTTP {r.status_code}", flush=True)


CHECKS = {"overload": check_overload, "frozen": check_frozen, "poison": check_poison,
          "decode-kill": check_decode_kill, "sigterm": check_sigterm,
          "slowloris": check_slowloris}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", choices=[*CHECKS, "all"], default="all")
    ap.add_argument("--requests", type=int, default=1000, help="overload: requests per policy")
    args = ap.parse_args()
    for name, fn in CHECKS.items():
        if args.check in (name, "all"):
            fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
