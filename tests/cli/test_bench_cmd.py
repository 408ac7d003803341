"""``dopd bench`` end to end against the fake OpenAI-compatible server of
``tests/bench/test_loadgen.py``: JSON shape (simulate's fields), --out files, trace timing with
--rate-scale, model resolution, exit codes and one-line errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from matplotlib.figure import Figure

from dopd.bench import loadgen_report, plots
from dopd.bench.plots import save_figure
from dopd.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from fake_openai import FAIL_500, MODEL, FakeServer, serve_fake
from figure_checks import assert_readable

FIXED = ["--lengths", "fixed:prompt=40,output=8", "--tokenizer", "dopd-tiny"]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    yield from serve_fake()


def bench(server: FakeServer, tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "r.json"
    assert main(["bench", "--url", server.url, *args, "--json", str(out), "-q"]) == 0
    return json.loads(out.read_text())


def test_json_has_simulate_fields_and_measures_the_server(server: FakeServer,
                                                          tmp_path: Path) -> None:
    server.reset(ttft_s=0.04, tpot_s=0.01)
    data = bench(server, tmp_path, *FIXED, "--requests", "20", "--rate", "40", "--seed", "3",
                 "--slo-ttft", "1", "--slo-tpot", "0.25", "--label", "live")
    assert list(data) == ["live"]
    rec = data["live"]
    sim_out = tmp_path / "sim.json"
    assert main(["simulate", "--requests", "20", "--rate", "40", "--policy", "colocated",
                 "--json", str(sim_out), "-q"]) == 0
    sim_fields = set(json.loads(sim_out.read_text())["colocated"])
    assert sim_fields <= set(rec), sim_fields - set(rec)
    assert rec["policy"] == "live" and rec["requests"] == rec["finished"] == rec["met"] == 20
    assert rec["attainment"] == 1.0 and rec["errors"] == {}
    # the server's delays are floors; the ceilings leave room for a loaded CI machine
    assert 0.04 <= rec["ttft_p50"] < 0.04 + 0.5
    assert 0.01 * 0.95 <= rec["tpot_p50"] < 0.01 * 5
    assert rec["prompt_tokens_ratio"] == 1.0  # dopd-tiny prompts: BOS + 39 bytes = 40 tokens
    assert len(server.seen) == 20
    assert all(len(s.body["prompt"]) == 39 and s.body["max_tokens"] == 8 for s in server.seen)
    assert all(s.body["model"] == MODEL for s in server.seen)  # the first model listed
    # the resolved config sits beside the JSON (workload, SLO, seed)
    assert "ttft_s = 1.0" in (tmp_path / "r.config.toml").read_text()


def test_trace_is_replayed_with_its_timing_scaled(server: FakeServer, tmp_path: Path) -> None:
    server.reset(ttft_s=0.01, tpot_s=0.005)
    stamps_ms = [0, 100, 150, 600, 610, 900]
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps({"timestamp": t, "input_length": 30 + i,
                                         "output_length": 3 + i, "hash_ids": [i]}) + "\n"
                             for i, t in enumerate(stamps_ms)))
    bench(server, tmp_path, "--trace", str(trace), "--rate-scale", "2", "--tokenizer", "byte")
    seen = sorted(server.seen, key=lambda s: len(s.body["prompt"]))  # trace order
    offset = np.array([s.at for s in seen]) - min(s.at for s in seen)
    expected = np.array(stamps_ms) / 1000 / 2
    # a loaded machine sends late, never early; unscaled timing (0.9 s span) would fail
    assert np.all(offset >= expected - 0.1) and np.all(offset < expected + 0.3)
    assert [len(s.body["prompt"]) for s in seen] == [30 + i for i in range(6)]
    assert [s.body["max_tokens"] for s in seen] == [3 + i for i in range(6)]


def test_out_dir_has_csv_plots_and_settings(server: FakeServer, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []

    def check_then_save(fig: Figure, path: str | Path) -> Path:
        assert_readable(fig)  # labelled axes, distinct legends, no overlapping tick labels
        checked.append(Path(path).name)
        return save_figure(fig, path)

    monkeypatch.setattr(plots, "save_figure", check_then_save)
    monkeypatch.setattr(loadgen_report, "save_figure", check_then_save)
    server.reset(ttft_s=0.02, tpot_s=0.005)  # every TTFT within a decade: the narrow log axis
    out = tmp_path / "out"
    assert main(["bench", "--url", server.url, *FIXED, "--requests", "6", "--rate", "30",
                 "--api-key", "key-9f3e", "--endpoint", "chat", "--out", str(out), "-q"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"results.json", "config.json", "config.toml", "bench.json", "workload.json",
            "requests_bench.csv", "timeline_bench.csv", "latency_cdf.png",
            "timeline.png"} <= names
    settings = json.loads((out / "bench.json").read_text())
    assert settings["endpoint"] == "chat" and settings["tokenizer"] == "dopd-tiny"
    written = "".join(p.read_text() for p in out.iterdir() if p.suffix != ".png")
    assert "key-9f3e" not in written  # the API key is never written
    rows = list(csv.DictReader((out / "requests_bench.csv").open()))
    assert len(rows) == 6 and {r["state"] for r in rows} == {"FINISHED"}
    assert all(float(r["ttft_s"]) > 0.02 - 1e-3 for r in rows)
    assert sorted(checked) == ["latency_cdf.png", "timeline.png"]


def test_concurrency_cap_warning_lands_in_the_settings(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.reset(ttft_s=0.1, tpot_s=0.01)
    out = tmp_path / "out"
    assert main(["bench", "--url", server.url, *FIXED, "--requests", "4", "--arrival",
                 "onoff:rate_on=1000,rate_off=0.001,mean_on_s=100,mean_off_s=1",
                 "--max-concurrency", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning: concurrency cap of 1 requests reached" in captured.err
    assert "3 requests waited for the concurrency cap" in captured.out
    settings = json.loads((out / "bench.json").read_text())
    assert settings["max_concurrency"] == 1 and len(settings["warnings"]) == 1
    assert json.loads((out / "results.json").read_text())["bench"]["capped"] == 3
    assert server.max_active == 1


def test_max_context_shortens_requests(server: FakeServer, tmp_path: Path) -> None:
    server.reset(ttft_s=0.01, tpot_s=0.001)
    bench(server, tmp_path, "--lengths", "fixed:prompt=3000,output=100", "--tokenizer",
          "dopd-tiny", "--requests", "2", "--rate", "50", "--max-context", "2048")
    assert [len(s.body["prompt"]) + 1 for s in server.seen] == [2047, 2047]
    assert [s.body["max_tokens"] for s in server.seen] == [1, 1]


def test_the_servers_context_window_is_the_default_max_context(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.reset(ttft_s=0.01, tpot_s=0.001, max_model_len=1000)
    out = tmp_path / "out"
    assert main(["bench", "--url", server.url, "--lengths", "fixed:prompt=3000,output=5",
                 "--tokenizer", "dopd-tiny", "--requests", "2", "--rate", "50",
                 "--out", str(out)]) == 0
    assert [len(s.body["prompt"]) + 1 for s in server.seen] == [999, 999]
    assert [s.body["max_tokens"] for s in server.seen] == [1, 1]
    settings = json.loads((out / "bench.json").read_text())
    assert settings["max_context"] == 1000 and settings["shortened_requests"] == 2
    assert "2 requests were shortened to fit the context window of 1000 tokens" in (
        capsys.readouterr().out)


def test_failures_are_counted_and_no_finished_request_exits_1(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.reset()
    out = tmp_path / "r.json"
    code = main(["bench", "--url", server.url, "--lengths", f"fixed:prompt=10,output={FAIL_500}",
                 "--requests", "3", "--rate", "50", "--json", str(out), "-q"])
    assert code == 1
    assert "no request finished (3 x HTTP 500)" in capsys.readouterr().err
    rec = json.loads(out.read_text())["bench"]
    assert rec["aborted"] == 3 and rec["attainment"] == 0.0 and rec["ttft_p50"] is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", f"http://127.0.0.1:{_closed_port()}"], "cannot reach the server at"),
        (["--model", "other"], "model 'other' is not served at"),
        (["--max-concurrency", "0"], "--max-concurrency must be >= 1"),
        (["--timeout", "0"], "--timeout must be > 0"),
        (["--url", "ftp://x"], "server URL must look like"),
        (["--tokenizer", "nope"], "tokenizer 'nope'"),
        (["--max-context", "1"], "--max-context must be >= 2"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    server: FakeServer, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server.reset()
    argv = ["bench", "--url", server.url, "--requests", "2", "-q", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dopd bench: error: ") and message in err
    assert "\n" not in err and "Traceback" not in err


def test_api_key_from_the_environment(server: FakeServer, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    server.reset(api_key="sekrit", ttft_s=0.01, tpot_s=0.001)
    monkeypatch.setenv("OPENAI_API_KEY", "sekrit")
    rec = bench(server, tmp_path, *FIXED, "--requests", "2", "--rate", "50")["bench"]
    assert rec["finished"] == 2
    monkeypatch.setenv("OPENAI_API_KEY", "wrong")
    assert main(["bench", "--url", server.url, *FIXED, "--requests", "2", "-q"]) == 2


def test_extra_body_must_be_a_json_object(server: FakeServer, tmp_path: Path) -> None:
    server.reset(ttft_s=0.01, tpot_s=0.001)
    bench(server, tmp_path, *FIXED, "--requests", "1", "--no-ignore-eos",
          "--extra-body", '{"min_tokens": 8, "temperature": 0}')
    body = server.seen[0].body
    assert body["min_tokens"] == 8 and body["temperature"] == 0 and "ignore_eos" not in body
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--extra-body", "[1]"])
    assert exc.value.code == 2


# ---------------------------------------------------------------- against dopd serve


def _start_dopd_serve(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _closed_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dopd.cli.main", "serve", "--port", str(port), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dopd serve exited with {proc.returncode}"
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("dopd serve did not become healthy")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.mark.slow
def test_bench_against_dopd_serve_emulated_agrees_with_simulate(tmp_path: Path) -> None:
    """dopd-tiny served in emulated mode: exact prompt and output lengths, everything finishes,
    and the measured TPOT matches the simulator's for the same model, GPU and policy."""
    cluster = ["--instances", "2", "--policy", "colocated"]
    proc, url = _start_dopd_serve("--mode", "emulated", *cluster)
    try:
        workload = ["--lengths", "fixed:prompt=600,output=48", "--requests", "30",
                    "--rate", "6", "--seed", "2"]
        out = tmp_path / "live.json"
        assert main(["bench", "--url", url, *workload, "--json", str(out), "-q"]) == 0
    finally:
        _stop(proc)
    live = json.loads(out.read_text())["bench"]
    assert live["finished"] == 30 and live["errors"] == {}
    assert live["prompt_tokens_ratio"] == 1.0 and live["short_outputs"] == 0
    sim_out = tmp_path / "sim.json"
    assert main(["simulate", *workload, *cluster, "--model", "llama-3-8b", "--gpu", "a100-80gb",
                 "--json", str(sim_out), "-q"]) == 0
    sim = json.loads(sim_out.read_text())["colocated"]
    assert live["tpot_p50"] == pytest.approx(sim["tpot_p50"], rel=0.3)
    assert sim["ttft_p50"] <= live["ttft_p50"] + 0.005 < sim["ttft_p50"] + 0.1


def test_endpoint_choices_match_the_client() -> None:
    from dopd.bench.loadgen_client import ENDPOINTS
    from dopd.cli.bench_cmd import ENDPOINT_NAMES

    assert tuple(ENDPOINTS) == ENDPOINT_NAMES
