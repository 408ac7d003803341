"""``benchmarks/bench_sensitivity.py --quick`` runs and prints its table, verdict and recovery."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_sensitivity.py"


def test_quick_mode_prints_ratios_to_the_oracle(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("bench_sensitivity", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_sensitivity", bench)  # dataclasses need it there
    spec.loader.exec_module(bench)
    out = tmp_path / "sens.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "B=-30%" in text and "B=+30%" in text and "target dopd+cal" in text
    assert "recovery" in text
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {(r["bias"], r["calibration"]) for r in rows} == {
        (-0.3, True), (-0.3, False), (0.3, True), (0.3, False)}
    assert all(r["ratio"] > 0 and 0 <= r["attainment_at_oracle_load"] <= 1 for r in rows)
    for kind in ("prefill", "decode"):
        assert data["recovery"][kind]["seconds_to_within_5pct"] < 60
