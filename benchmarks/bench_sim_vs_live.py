"""Simulator versus live: one short trace through `dopd simulate` and through `dopd serve --mode
emulated` measured by `dopd bench`, same model, GPU and policies; P50/P90 TTFT and TPOT side by
side with their relative difference, PASS when every one is within the tolerance (15 %).

    python3 benchmarks/bench_sim_vs_live.py                       # Azure conv, 2 instances
    python3 benchmarks/bench_sim_vs_live.py --policies colocated,static:1:1 --step-time-scale 4 \
        --json sim_vs_live.json

The workload is a slice of the Azure LLM 2023 conversation trace (--start/--duration seconds of
trace time), time-compressed by --rate-scale, and clipped to --max-context tokens per request
(dopd-tiny, the model the emulated workers load, has a 2048-token window); both sides get this
same workload file. Emulated steps sleep --step-time-scale times the latency model's step time
(KV transfers too), so the live run replays the workload with every arrival time multiplied by
that scale, and its measured latencies are divided by it: the comparison is of the same
workload, with the load generator's, HTTP's and the workers' own CPU overheads shrunk by the
scale (the CPU of a small machine is shared by the load generator, the front end and every
worker). Exit code 0 when every figure passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from dopd.bench.loadgen import clip_to_context
from dopd.workload import Workload, load_workload
from dopd.workload.traces import save_workload

TRACE = "azure-conv"  # shipped in dopd.data
METRICS = ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90")
START_TIMEOUT_S = 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dopd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dopd.cli.main", *args]


def _out(args: argparse.Namespace, path: Path) -> list[str]:
    """``--out`` (per-request CSVs, timelines, plots) when the files are kept."""
    return ["--out", str(path)] if args.keep else []


def _slo(args: argparse.Namespace, scale: float = 1.0) -> list[str]:
    """The SLO, the same on both sides (the policies and routers plan with it; ``dopd serve``
    and ``dopd simulate`` have different defaults), in wall seconds: ``scale`` x the modeled
    SLO live, where the steps take ``scale`` times their modeled time."""
    return ["--slo-ttft", repr(args.slo_ttft * scale), "--slo-tpot", repr(args.slo_tpot * scale)]


def build_workload(args: argparse.Namespace) -> Workload:
    """The trace slice, time-compressed and clipped to the context window."""
    trace = load_workload(args.trace)
    cut = trace.cut(duration_s=args.duration, start_s=args.start)
    return clip_to_context(cut.scale_rate(args.rate_scale), args.max_context)


def run_sim(args: argparse.Namespace, workload_csv: Path, out: Path) -> dict[str, Any]:
    """`dopd simulate` of every policy; its JSON records keyed by policy."""
    path = out / "sim.json"
    subprocess.run(_dopd(
        "simulate", "--trace", str(workload_csv), "--model", args.model, "--gpu", args.gpu,
        "--instances", str(args.instances), "--policy", ",".join(args.policies),
        "--seed", str(args.seed), *_slo(args), "--json", str(path), "-q",
        *_out(args, out / "sim")),
        check=True, timeout=600)
    return json.loads(path.read_text())


def _wait_healthy(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dopd serve exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"dopd serve not healthy after {START_TIMEOUT_S:g} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def run_live(args: argparse.Namespace, policy: str, live_csv: Path, out: Path
             ) -> dict[str, Any]:
    """`dopd serve --mode emulated` under ``policy`` loaded by `dopd bench` with the
    time-stretched workload; its JSON record with latencies divided by the step-time scale."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    name = policy.replace(":", "_")
    log = (out / f"serve_{name}.log").open("wb")
    proc = subprocess.Popen(_dopd(
        "serve", "--mode", "emulated", "--perf-model", args.model, "--gpu", args.gpu,
        "--instances", str(args.instances), "--policy", policy,
        "--step-time-scale", repr(args.step_time_scale), "--port", str(port),
        "--seed", str(args.seed), *_slo(args, args.step_time_scale),
        *(["--config", args.serve_config] if args.serve_config else [])),
        stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        _wait_healthy(proc, url)
        path = out / f"live_{name}.json"
        subprocess.run(_dopd(
            "bench", "--url", url, "--trace", str(live_csv), "--label", policy,
            "--seed", str(args.seed), "--json", str(path), "-q",
            *_out(args, out / f"live_{name}")), check=True,
            timeout=max(600.0, 20 * args.duration * args.step_time_scale / args.rate_scale))
    finally:
        _stop(proc)
        log.close()
    record = json.loads(path.read_text())[policy]
    scale = args.step_time_scale
    for key, value in list(record.items()):
        if key.split("_")[0] in ("ttft", "tpot", "e2e") and isinstance(value, float):
            record[key] = value / scale
    return record


def compare(sim: dict[str, Any], live: dict[str, Any], tolerance: float
            ) -> list[dict[str, Any]]:
    """One row per (policy, metric): sim, live, relative difference (live vs sim), pass."""
    rows = []
    for policy, rec in live.items():
        for metric in METRICS:
            s, v = sim[policy][metric], rec[metric]
            diff = None if not s else (v - s) / s
            rows.append({"policy": policy, "metric": metric, "sim": s, "live": v,
                         "rel_diff": diff, "pass": diff is not None and abs(diff) <= tolerance})
    return rows


def print_table(rows: list[dict[str, Any]], tolerance: float) -> None:
    print(f"{'policy':<14}{'metric':<10}{'sim (ms)':>10}{'live (ms)':>11}{'diff':>9}  "
          f"within {100 * tolerance:g} %")
    for r in rows:
        diff = "n/a" if r["rel_diff"] is None else f"{100 * r['rel_diff']:+.1f}%"
        print(f"{r['policy']:<14}{r['metric']:<10}{1e3 * r['sim']:>10.1f}"
              f"{1e3 * r['live']:>11.1f}{diff:>9}  {'PASS' if r['pass'] else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trace", default=TRACE,
                   help="dataset name or trace file (default: azure-conv)")
    p.add_argument("--start", type=float, default=0.0, help="slice start, trace seconds")
    p.add_argument("--duration", type=float, default=60.0, help="slice length, trace seconds")
    p.add_argument("--rate-scale", type=float, default=2.5,
                   help="time compression of the slice (default 2.5)")
    p.add_argument("--max-context", type=int, default=2048,
                   help="clip prompt + output to this many tokens (dopd-tiny's window)")
    p.add_argument("--model", default="llama-3-8b", help="latency model's model")
    p.add_argument("--gpu", default="a100-80gb", help="latency model's GPU")
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--policies", default="colocated,static:1:1",
                   help="comma-separated policies (default colocated,static:1:1)")
    p.add_argument("--step-time-scale", type=float, default=4.0,
                   help="emulated steps sleep this many times the modeled time (default 4)")
    p.add_argument("--tolerance", type=float, default=0.15)
    p.add_argument("--slo-ttft", type=float, default=0.5,
                   help="TTFT SLO of both sides, seconds (default 0.5, dopd simulate's)")
    p.add_argument("--slo-tpot", type=float, default=0.1,
                   help="TPOT SLO of both sides, seconds (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serve-config", default=None, metavar="FILE.toml",
                   help="a [serve] table for the live side, e.g. to try other engine limits")
    p.add_argument("--json", default=None, metavar="PATH", help="write the rows and settings")
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="keep the workload, JSON records and server logs in DIR")
    args = p.parse_args(argv)
    args.policies = [s.strip() for s in args.policies.split(",") if s.strip()]
    if args.step_time_scale <= 0 or args.rate_scale <= 0 or args.duration <= 0:
        p.error("--step-time-scale, --rate-scale and --duration must be > 0")

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="sim_vs_live_")
    out = Path(args.keep or tmp.name)  # type: ignore[union-attr]
    out.mkdir(parents=True, exist_ok=True)
    try:
        workload = build_workload(args)
        workload_csv, live_csv = out / "workload.csv", out / "workload_live.csv"
        save_workload(workload, workload_csv)
        save_workload(workload.scale_rate(1 / args.step_time_scale), live_csv)
        print(f"workload: {len(workload)} requests over {workload.duration_s:.1f} s "
              f"({workload.rate_rps:.2f} req/s), prompt mean "
              f"{workload.prompt_tokens.mean():.0f}, output mean "
              f"{workload.output_tokens.mean():.0f} tokens | {args.model} on {args.gpu}, "
              f"{args.instances} instances | live: step-time scale {args.step_time_scale:g} "
              f"(arrivals x{args.step_time_scale:g}, latencies / {args.step_time_scale:g})",
              flush=True)
        started = time.perf_counter()
        sim = run_sim(args, workload_csv, out)
        live = {}
        for policy in args.policies:
            live[policy] = run_live(args, policy, live_csv, out)
        rows = compare(sim, live, args.tolerance)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print_table(rows, args.tolerance)
    ok = all(r["pass"] for r in rows)
    print(f"{'PASS' if ok else 'FAIL'} ({time.perf_counter() - started:.0f} s) | command: "
          f"python3 benchmarks/bench_sim_vs_live.py {' '.join(argv or sys.argv[1:])}")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "keep")}
        Path(args.json).write_text(json.dumps(
            {"settings": settings, "workload": workload.summary(), "rows": rows,
             "live_finished": {k: v["finished"] for k, v in live.items()}}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
