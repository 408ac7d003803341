"""Up-front output checks and the one ``--json [PATH]`` semantic of every command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dopd.cli.checks import check_count, check_output_dir, check_output_file
from dopd.cli.main import main
from dopd.errors import DopdError


def test_output_file_needs_an_existing_folder_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(DopdError, match="does not exist"):
        check_output_file(str(tmp_path / "missing" / "x.json"))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DopdError, match="is a folder"):
        check_output_file(str(tmp_path))
    assert check_output_file(str(tmp_path / "x.json")) == tmp_path / "x.json"
    assert check_output_file("-") is None and check_output_file(None) is None
    assert list(tmp_path.iterdir()) == []  # the probe is gone


def test_output_dir_is_created_and_probed(tmp_path: Path) -> None:
    made = check_output_dir(str(tmp_path / "a" / "b"))
    assert made.is_dir() and list(made.iterdir()) == []
    (tmp_path / "f").write_text("")
    with pytest.raises(DopdError, match="not a directory"):
        check_output_dir(str(tmp_path / "f"))
    with pytest.raises(DopdError, match="cannot create"):
        check_output_dir(str(tmp_path / "f" / "sub"))


def test_count_bounds_state_the_reason() -> None:
    check_count(None, "--n", 10, "why")
    check_count(10, "--n", 10, "why")
    with pytest.raises(DopdError, match="over the limit of 10: because"):
        check_count(11, "--n", 10, "because")
    with pytest.raises(DopdError, match=">= 2"):
        check_count(1, "--n", 10, "why", least=2)


def test_json_alone_prints_and_json_path_writes(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["perf", "--decode", "8x512", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert main(["perf", "--decode", "8x512", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out) == printed
    target = tmp_path / "perf.json"
    assert main(["perf", "--decode", "8x512", "--json", str(target)]) == 0
    assert json.loads(target.read_text()) == printed
    assert "step" in capsys.readouterr().out  # the table still prints with a file

    assert main(["plan", "--rate", "5", "--isl-mean", "500", "--osl-mean", "100", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["plan"]["n_prefill"] >= 1
    out = tmp_path / "plan.json"
    assert main(["plan", "--rate", "5", "--isl-mean", "500", "--osl-mean", "100",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text()) == plan


def test_simulate_json_on_stdout_is_only_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--requests", "60", "--rate", "20", "--instances", "2",
                 "--policy", "colocated", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data) == ["colocated"]


def test_generate_json_reports_threads_default_one_for_tiny() -> None:
    proc = subprocess.run([sys.executable, "-m", "dopd.cli.main", "generate", "--prompt", "Hi",
                           "--max-tokens", "4", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["threads"] == 1


def test_plan_help_has_no_markup_and_states_the_elastic_default(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["plan", "-h"])
    text = capsys.readouterr().out
    assert "``" not in text and "::" not in text
    assert "default: none, plan the smallest elastic pool" in " ".join(text.split())


def test_serve_help_shows_defaults_and_every_config_key(
        capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import fields

    from dopd.serve.serve_config import ServeConfig

    with pytest.raises(SystemExit):
        main(["serve", "-h"])
    text = capsys.readouterr().out
    assert "[8000]" in text and "[colocated]" in text and "[127.0.0.1]" in text
    for f in fields(ServeConfig):
        assert f"{f.name}=" in text, f.name


def test_perf_mem_util_is_a_hidden_alias(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["perf", "-h"])
    text = capsys.readouterr().out
    assert "--kv-mem-util" in text and "--mem-util" not in text.replace("--kv-mem-util", "")
    assert main(["perf", "--decode", "8", "--mem-util", "0.5", "--json"]) == 0
    half = json.loads(capsys.readouterr().out)["kv_capacity_tokens"]
    assert main(["perf", "--decode", "8", "--kv-mem-util", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kv_capacity_tokens"] == half


def test_bench_default_load_is_gentle() -> None:
    import argparse

    from dopd.cli.bench_cmd import DEFAULT_RATE, DEFAULT_REQUESTS, bench_defaults

    blank = argparse.Namespace(config=None, trace=None, rate=None, requests=None, duration=None)
    assert bench_defaults(blank) == {"rate": DEFAULT_RATE, "requests": DEFAULT_REQUESTS}
    assert DEFAULT_RATE <= 5 and DEFAULT_REQUESTS <= 200
    given = argparse.Namespace(config=None, trace=None, rate=9.0, requests=None, duration=30.0)
    assert bench_defaults(given) == {}
