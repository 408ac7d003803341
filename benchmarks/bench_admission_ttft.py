"""Admission control's predicted TTFT against the observed, live, with and without
self-calibration (prints figures).

Starts ``dopd serve --mode real`` (dopd-tiny, ``--instances`` workers, policy ``dopd``: the
``length-aware`` router with admission control on) twice on this machine, once calibrating
itself at start (the default) and once with ``--no-self-calibration`` (the belief starts from
the configured model, llama-3-8b on a100-80gb, and only the online calibrator corrects it),
and drives each with the same open-loop ``dopd bench`` load (Poisson arrivals, lognormal
lengths). For every request the router's predicted TTFT at placement (what admission control
compares with the SLO) is recorded in its outcome; the server's ``/v1/cluster``
(``calibration.ttft``) gives the median and P90 of ``|predicted / observed - 1|`` (observed on
the front end: arrival to the first token's event) and the mean signed error. The client's
TTFT percentiles and the requests admission control rejected are printed beside them.
Target: median within 25 %. Usage::

    python3 benchmarks/bench_admission_ttft.py                      # 80 requests at 4 req/s
    python3 benchmarks/bench_admission_ttft.py --requests 150 --rate 6 --json out/ttft.json
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
import urllib.request
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
READY_S = 300.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env


def _dopd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dopd.cli.main", *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _wait_ready(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dopd serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("dopd serve did not become ready in time")


def run_variant(label: str, serve_args: list[str], args: argparse.Namespace,
                workdir: Path) -> dict[str, Any]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (workdir / f"{label}.log").open("wb")
    proc = subprocess.Popen(
        _dopd("serve", "--mode", "real", "--instances", str(args.instances), "--policy",
              "dopd", "--slo-ttft", str(args.slo_ttft), "--port", str(port), *serve_args),
        stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    try:
        _wait_ready(proc, url)
        before = _get(url + "/v1/cluster")["calibration"]
        out = workdir / f"{label}.json"
        subprocess.run(_dopd(
            "bench", "--url", url, "--model", "dopd-tiny", "--lengths", args.lengths,
            "--rate", str(args.rate), "--requests", str(args.requests), "--seed",
            str(args.seed), "--slo-ttft", str(args.slo_ttft), "--label", label,
            "--json", str(out), "-q"), env=_env(), check=True, timeout=900)
        state = _get(url + "/v1/cluster")
        client = json.loads(out.read_text())
        summary = client.get(label, client)
        ttft = state["calibration"]["ttft"]
        own = before["self_calibration"]
        return {
            "variant": label, "requests": args.requests, "predicted": ttft["n"],
            "rejected": state["rejected"],
            "median_abs_rel_err": ttft["median_abs_rel_err"],
            "p90_abs_rel_err": ttft["p90_abs_rel_err"], "mean_rel_err": ttft["mean_rel_err"],
            "client_ttft_p50_s": summary.get("ttft_p50"),
            "client_ttft_p90_s": summary.get("ttft_p90"),
            "belief_at_start": before["model"],
            "self_calibration": {k: own[k] for k in ("status", "seconds", "fit", "held_back")},
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=80)
    p.add_argument("--rate", type=float, default=4.0)
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--lengths", default="lognormal:prompt_mean=300,prompt_cv=0.8,"
                   "output_mean=24,output_cv=0.5")
    p.add_argument("--slo-ttft", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_variant("self-calibrated", [], args, Path(tmp)),
                run_variant("configured-model", ["--no-self-calibration"], args, Path(tmp))]
    print(f"{args.requests} requests at {args.rate:g} req/s ({args.lengths}), "
          f"{args.instances} real dopd-tiny workers, policy dopd, TTFT SLO {args.slo_ttft:g} s")
    print(f"{'belief':<18} {'predicted':>9} {'rejected':>8} {'median |err|':>12} "
          f"{'P90 |err|':>10} {'mean err':>9} {'TTFT p50':>9} {'TTFT p90':>9}")
    for r in rows:
        p50, p90 = r["client_ttft_p50_s"], r["client_ttft_p90_s"]
        print(f"{r['variant']:<18} {r['predicted']:>9} {r['rejected']:>8} "
              f"{_pct(r['median_abs_rel_err']):>12} {_pct(r['p90_abs_rel_err']):>10} "
              f"{_pct(r['mean_rel_err']):>9} "
              f"{'-' if p50 is None else f'{1e3 * p50:.0f} ms':>9} "
              f"{'-' if p90 is None else f'{1e3 * p90:.0f} ms':>9}")
    fitted, configured = rows
    if fitted["median_abs_rel_err"] and configured["median_abs_rel_err"]:
        print(f"median |error| ratio, configured / self-calibrated: "
              f"{configured['median_abs_rel_err'] / fitted['median_abs_rel_err']:.1f}x "
              f"(target: self-calibrated median within 25 %: "
              f"{'met' if fitted['median_abs_rel_err'] <= 0.25 else 'missed'})")
    own = fitted["self_calibration"]
    if own["held_back"]:
        print(f"self-calibration: {own['seconds']:.1f} s, held-back step error median "
              f"{_pct(own['held_back']['median_rel_error'])}, worst "
              f"{_pct(own['held_back']['max_rel_error'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
