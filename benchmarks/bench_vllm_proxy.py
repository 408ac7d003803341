"""Proxy overhead of dopd in front of a vLLM fleet, side by side.

Two ``vllm serve`` instances (the CPU build of ``.venv-vllm``, NIXL over loopback, launched as
``dopd serve --engine vllm`` launches them) and ``dopd serve --engine vllm --policy static:1:1``
attached to them. Each round sends one prompt twice, in alternating order:

* ``direct``: the client itself calls the prefill instance (``max_tokens`` 1,
  ``do_remote_decode``) and then the decode instance with the returned ``kv_transfer_params``,
  streamed: the least a P/D proxy has to do;
* ``dopd``: the same request through dopd (router, dispatcher, hand-off, SSE).

TTFT is the client's time to the first streamed token. "Added" is dopd's TTFT minus the direct
sequence's, per pair (P50 over pairs, with a seeded bootstrap 95 % interval of that median,
``p50_ci95``). dopd's own front-end time (``GET /debug/frontend``: the
request at the app to its submit, and the upstream event to the SSE chunk written) is printed
too. Requests whose TTFT exceeds ``--stall-s`` on either side are counted and left out of the
pairs (the CPU build's NIXL pulls sometimes stall for seconds; the stall is vLLM's, not the
proxy's, and it would swamp the comparison).

``--upstream null`` replaces the two vLLM instances by null upstreams (``null_vllm.py``: the
same HTTP API, answered at once, in their own processes): the CPU instances' jitter (TTFT P90
several times its P50) hides a proxy's milliseconds, and the null upstream takes it out of both
sides of the comparison, as a GPU instance's steady steps would.

    python3 benchmarks/bench_vllm_proxy.py --requests 150 --out out/vllm_proxy.json
    python3 benchmarks/bench_vllm_proxy.py --upstream null --requests 1000
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "serve" / "vllm"))

from vllm_helpers import (  # noqa: E402
    VLLM_PYTHON,
    Upstream,
    attach_args,
    free_port,
    launch_upstream,
    start_fleet_server,
    stop_upstream,
    wait_healthy,
    write_tiny_llama,
)

from dopd.engine.model import Tokenizer, tiny_tokenizer  # noqa: E402
from dopd.serve.vllm.instance import PREFILL_PARAMS  # noqa: E402

PROMPT = "the quick brown fox jumps over the lazy dog " * 4


def first_token_s(client: httpx.Client, url: str, body: dict[str, object]) -> float:
    """Seconds from sending ``body`` (streamed) to its first token; the rest is read."""
    t0 = time.perf_counter()
    ttft = float("nan")
    with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if ttft != ttft and line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0].get("token_ids"):
                    ttft = time.perf_counter() - t0
    return ttft


def direct_ttft(client: httpx.Client, p_url: str, d_url: str, ids: list[int],
                max_tokens: int) -> float:
    """The client as its own P/D proxy: prefill, then decode with the KV parameters."""
    t0 = time.perf_counter()
    base = {"model": "dopd-upstream", "prompt": ids, "temperature": 0, "ignore_eos": True,
            "return_token_ids": True}
    r = client.post(f"{p_url}/v1/completions", json={
        **base, "max_tokens": 1, "kv_transfer_params": dict(PREFILL_PARAMS)})
    r.raise_for_status()
    kv = r.json()["kv_transfer_params"]
    prefill_s = time.perf_counter() - t0
    return prefill_s + first_token_s(client, d_url, {
        **base, "max_tokens": max_tokens, "stream": True, "kv_transfer_params": kv})


class _NullProcess:
    """A ``null_vllm.py`` process on ``port`` (``stop_upstream`` terminates it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "null_vllm.py"), "--port", str(port),
             "--model", "dopd-upstream"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def detail(self) -> str:
        return f"exit code {self.proc.returncode}"

    def terminate(self, timeout_s: float) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout_s)


def launch_null(n: int) -> Upstream:
    """``n`` null upstreams on free loopback ports, answering ``/health``."""
    procs = [_NullProcess(free_port()) for _ in range(n)]
    up = Upstream([f"http://127.0.0.1:{p.port}" for p in procs], list(procs))
    wait_healthy(up, 30.0, "null upstream", period_s=0.1)
    return up


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def median_ci95(xs: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A seeded percentile-bootstrap 95 % interval of the median of ``xs``."""
    if not xs:
        return float("nan"), float("nan")
    data = np.asarray(xs)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(data, size=(rounds, data.size), replace=True), axis=1)
    return float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--stall-s", type=float, default=2.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--upstream", choices=("vllm", "null"), default="vllm",
                    help="vLLM CPU instances, or null upstreams that answer at once")
    args = ap.parse_args()
    if args.upstream == "vllm" and VLLM_PYTHON is None:
        print("no vLLM environment: run `bash scripts/install_vllm.sh` first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="dopd-vllm-bench-"))
    if args.upstream == "vllm":
        model = write_tiny_llama(work / "model")
    else:
        model = work / "model"
        model.mkdir()
        tiny_tokenizer().save(model)
    ids = Tokenizer.from_folder(model).encode(PROMPT)
    up = launch_upstream(model, 2, work) if args.upstream == "vllm" else launch_null(2)
    server = None
    try:
        server = start_fleet_server(*attach_args(model, up, "--policy", "static:1:1",
                                                 "--max-queued-requests", "64"))
        name = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
        body = {"model": name, "prompt": PROMPT, "max_tokens": args.max_tokens,
                "temperature": 0, "ignore_eos": True, "stream": True,
                "return_token_ids": True}
        pairs: list[tuple[float, float]] = []
        stalls = 0
        with httpx.Client(timeout=120) as client:
            for _ in range(3):  # warm both paths
                direct_ttft(client, up.urls[0], up.urls[1], ids, args.max_tokens)
                first_token_s(client, server.url, body)
            httpx.post(f"{server.url}/debug/frontend/reset")
            for i in range(args.requests):
                if i % 2 == 0:
                    d = direct_ttft(client, up.urls[0], up.urls[1], ids, args.max_tokens)
                    p = first_token_s(client, server.url, body)
                else:
                    p = first_token_s(client, server.url, body)
                    d = direct_ttft(client, up.urls[0], up.urls[1], ids, args.max_tokens)
                if d > args.stall_s or p > args.stall_s:
                    stalls += 1
                    continue
                pairs.append((d, p))
        front = httpx.get(f"{server.url}/debug/frontend").json()
    finally:
        if server is not None:
            server.stop()
        stop_upstream(up)
    direct = [d for d, _ in pairs]
    dopd = [p for _, p in pairs]
    added = [p - d for d, p in pairs]
    result = {
        "upstream": args.upstream, "requests": args.requests, "pairs": len(pairs),
        "stalled": stalls,
        "prompt_tokens": len(ids), "max_tokens": args.max_tokens,
        "direct_ttft_ms": {"p50": pct(direct, .5) * 1e3, "p90": pct(direct, .9) * 1e3},
        "dopd_ttft_ms": {"p50": pct(dopd, .5) * 1e3, "p90": pct(dopd, .9) * 1e3},
        "added_ms": {"p50": pct(added, .5) * 1e3, "p90": pct(added, .9) * 1e3,
                     "mean": statistics.fmean(added) * 1e3 if added else float("nan"),
                     "p50_ci95": [v * 1e3 for v in median_ci95(added)]},
        "dopd_frontend": front,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
