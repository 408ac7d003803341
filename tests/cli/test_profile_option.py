"""``--profile`` in ``simulate`` and ``plan``: the profile model drives the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dopd.cli.main import main
from dopd.sim.run_config import load_run_config

SMALL = ["--requests", "100", "--rate", "8", "--instances", "2", "--policy", "colocated"]


def tpot_p50(tmp_path: Path, name: str, *args: str) -> float:
    out = tmp_path / f"{name}.json"
    assert main(["simulate", *SMALL, *args, "--json", str(out), "-q"]) == 0
    return float(json.loads(out.read_text())["colocated"]["tpot_p50"])


def test_simulate_with_a_profile(tmp_path: Path) -> None:
    profiled = tpot_p50(tmp_path, "p", "--profile", "vidur-a100")
    roofline = tpot_p50(tmp_path, "r")
    assert profiled > 0 and profiled != roofline
    assert load_run_config(tmp_path / "p.config.toml").cluster.profile == "vidur-a100"


def test_plan_with_a_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--profile", "vidur-a100", "--requests", "100", "--rate", "4"]) == 0
    assert "recommended:" in capsys.readouterr().out


@pytest.mark.parametrize(("command", "args", "message"), [
    ("simulate", [*SMALL, "--profile", "nope", "-q"], "neither a shipped name"),
    ("simulate", [*SMALL, "--profile", "vidur-a100", "--model", "opt-13b", "-q"],
     "measured for a model"),
    ("plan", ["--profile", "vidur-a100", "--gpu", "h100", "--requests", "50"], "measured on"),
])
def test_bad_profile_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str],
                                                 command: str, args: list[str],
                                                 message: str) -> None:
    assert main([command, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
