"""`dopd bench` against a vLLM fleet under three policies: colocated, static:1:1 and dopd.

Two CPU ``vllm serve`` instances of the tests' tiny Llama (launched once), and for each policy a
``dopd serve --engine vllm`` attached to them, loaded by ``dopd bench`` (Poisson 3 req/s, 90
requests, prompts 32-400 tokens, outputs 4-48, SLO TTFT 2 s / TPOT 0.2 s). Writes
``--out`` (JSON: each policy's bench summary and final P/D counts).

    nice -n 19 python3 benchmarks/bench_vllm_policies.py --out results/vllm_policies.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "serve" / "vllm"))

from vllm_helpers import (  # noqa: E402
    VLLM_PYTHON,
    attach_args,
    launch_upstream,
    start_fleet_server,
    stop_upstream,
    write_tiny_llama,
)

POLICIES = ("colocated", "static:1:1", "dopd")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=3.0)
    ap.add_argument("--requests", type=int, default=90)
    ap.add_argument("--out", default="results/vllm_policies.json")
    args = ap.parse_args()
    if VLLM_PYTHON is None:
        print("no vLLM environment: run `bash scripts/install_vllm.sh` first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="dopd-vllm-policies-"))
    model = write_tiny_llama(work / "model")
    up = launch_upstream(model, 2, work)
    out = {}
    try:
        for policy in POLICIES:
            srv = start_fleet_server(*attach_args(model, up, "--policy", policy, "--slo-ttft",
                                                  "2", "--slo-tpot", "0.2", "--tick", "1"))
            try:
                r = subprocess.run([
                    sys.executable, "-m", "dopd.cli.main", "bench", "--url", srv.url,
                    "--tokenizer", str(model), "--lengths",
                    "uniform:prompt_min=32,prompt_max=400,output_min=4,output_max=48",
                    "--rate", str(args.rate), "--requests", str(args.requests), "--seed", "1",
                    "--slo-ttft", "2", "--slo-tpot", "0.2", "--label", policy,
                    "--json", str(work / "bench.json"), "--quiet", "--timeout", "120"],
                    capture_output=True, text=True, timeout=600, check=False)
                if r.returncode != 0:
                    print(r.stderr[-2000:], file=sys.stderr)
                s = json.loads((work / "bench.json").read_text())[policy]
                counts = srv.get("/v1/cluster").json().get("counts")
                out[policy] = {"summary": s, "counts": counts}
                print(f"{policy:11s} finished {s['finished']}/{s['requests']} attainment "
                      f"{s['attainment']:.2f} goodput {s['goodput_rps']:.2f} req/s TTFT P50/P90 "
                      f"{s['ttft_p50']:.2f}/{s['ttft_p90']:.2f} s TPOT P50/P90 "
                      f"{s['tpot_p50']:.3f}/{s['tpot_p90']:.3f} s errors {s['errors']} "
                      f"final P/D {counts}", flush=True)
            finally:
                srv.stop()
    finally:
        stop_upstream(up)
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
