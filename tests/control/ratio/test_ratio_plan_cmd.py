"""``dopd plan`` end to end through the CLI entry point."""

from __future__ import annotations

import json

import pytest

from dopd.cli.main import main

CODE = "azure-code"
STATED = ["--rate", "20", "--isl-mean", "1500", "--isl-cv", "1.2", "--osl-mean", "250",
          "--osl-cv", "0.8", "--slo-ttft", "1", "--slo-tpot", "0.05"]


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_stated_moments_elastic(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, STATED)
    plan = out["plan"]
    assert plan["mode"] == "elastic"
    assert plan["n_prefill"] >= 1 and plan["n_decode"] >= 1
    assert plan["attainment"] >= 0.9
    assert out["workload"]["rate_rps"] == pytest.approx(20.0)
    assert out["workload"]["isl_cv"] == pytest.approx(1.2, rel=1e-3)


def test_trace_fixed_pool_table(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, ["--trace", CODE, "--duration", "900", "--rate-scale", "2",
                         "--instances", "4", "--slo-ttft", "1", "--slo-tpot", "0.05"])
    plan = out["plan"]
    assert plan["mode"] == "fixed" and plan["n_prefill"] + plan["n_decode"] == 4
    assert [s["n_prefill"] for s in plan["splits"]] == [1, 2, 3]
    assert plan["n_prefill"] == 3  # the code trace is prefill-heavy
    assert out["workload"]["series_windows"] > 0


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *STATED, "--instances", "5"]) == 0
    text = capsys.readouterr().out
    assert "recommended:" in text and "TTFT p90" in text and "reason:" in text


def test_lengths_file_and_ablation(capsys: pytest.CaptureFixture[str]) -> None:
    sharegpt = "sharegpt"
    full = _json(capsys, ["--lengths", sharegpt, "--rate", "10", "--requests", "3000"])
    flat = _json(capsys, ["--lengths", sharegpt, "--rate", "10", "--requests", "3000",
                          "--no-variance-term"])
    assert flat["plan"]["n_prefill"] <= full["plan"]["n_prefill"]


@pytest.mark.parametrize("argv", [
    ["--instances", "1"],
    ["--isl-mean", "100", "--osl-mean", "10"],                     # no --rate
    ["--rate", "5", "--isl-mean", "100"],                          # no --osl-mean
    ["--rate", "5", "--isl-mean", "-1", "--osl-mean", "10"],
    ["--rate", "5", "--isl-mean", "100", "--osl-mean", "10", "--isl-cv", "-0.5"],
    ["--trace", CODE, "--rate", "5", "--isl-mean", "100", "--osl-mean", "10"],
    ["--trace", "/nonexistent/trace.csv"],
    ["--model", "no-such-model", *STATED],
    ["--max-instances", "1", *STATED],
    ["--slo-ttft", "0", *STATED[:-4]],
])
def test_bad_input_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dopd plan: error:") and err.count("\n") == 1
