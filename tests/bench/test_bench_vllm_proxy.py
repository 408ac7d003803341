"""``benchmarks/bench_vllm_proxy.py --upstream null`` runs end to end: real ``dopd serve
--engine vllm`` attached to two null upstreams, the paired comparison and its JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_vllm_proxy.py"


def test_null_upstream_comparison_writes_pairs_and_the_added_ttft(tmp_path: Path) -> None:
    out = tmp_path / "proxy.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--upstream", "null", "--requests", "8",
                           "--out", str(out)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["upstream"] == "null" and data["pairs"] + data["stalled"] == 8
    assert data["pairs"] >= 6
    added = data["added_ms"]
    assert math.isfinite(added["p50"]) and added["p50_ci95"][0] <= added["p50_ci95"][1]
    # the null upstreams answer at once: both paths are milliseconds, not a CPU engine's 100s
    assert data["direct_ttft_ms"]["p50"] < 200 and data["dopd_ttft_ms"]["p50"] < 200
    assert data["dopd_frontend"]["requests"] >= 8
