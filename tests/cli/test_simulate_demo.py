"""The main job: ``dopd simulate`` with no workload source shows dopd beside the baselines on a
shipped trace at a load where they part, a verdict and the next commands."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import pytest

from dopd.cli.main import main
from dopd.cli.simulate_demo import (
    DEFAULT_POLICIES,
    DEMO_OVERRIDES,
    NEXT_COMMANDS,
    is_demo,
    simulate_overrides,
)
from dopd.sim.run_config import load_run_config


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, dict]]:
    out = tmp_path_factory.mktemp("demo") / "demo.json"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["simulate", "--json", str(out)]) == 0
    return buf.getvalue(), json.loads(out.read_text())


def test_the_main_job_runs_dopd_beside_the_baselines_on_a_shipped_trace(
    demo: tuple[str, dict[str, dict]],
) -> None:
    printed, records = demo
    assert list(records) == ["colocated", "static:best", "dopd"]
    assert "trace azure-code at 5x" in printed
    for name in ("colocated", "static:best(", "dopd", "attain %", "goodput r/s", "rejected %",
                 "TTFT p90 s", "TPOT p90 ms"):
        assert name in printed, name
    config = load_run_config(None, DEMO_OVERRIDES)
    assert config.workload.trace == "azure-code" and config.policies == tuple(records)


def test_the_policies_part_and_the_verdict_says_by_how_much(
    demo: tuple[str, dict[str, dict]],
) -> None:
    printed, records = demo
    dopd = records["dopd"]
    best = max((r for k, r in records.items() if k != "dopd"), key=lambda r: r["goodput_rps"])
    # the point of the main job: at this load dopd meets the 90% target and the baselines do not
    assert dopd["attainment"] >= 0.9 > best["attainment"]
    ratio = dopd["goodput_rps"] / best["goodput_rps"]
    assert ratio > 1.2
    assert f"Verdict: dopd wins. Goodput {dopd['goodput_rps']:.2f} req/s" in printed
    assert f"({ratio:.2f}x)" in printed
    assert "Only dopd meets the 90% target." in printed
    share = 100 * dopd["rejected"] / dopd["requests"]
    assert f"dopd {share:.1f}% ({dopd['rejected']} of {dopd['requests']})" in printed


def test_the_next_commands_are_printed_and_parse(demo: tuple[str, dict[str, dict]]) -> None:
    printed, _ = demo
    assert "Next:" in printed
    for command, what in NEXT_COMMANDS:
        assert command in printed and what in printed
        words = command.split()
        assert words[0] == "dopd"
        with pytest.raises(SystemExit) as info:  # every one is accepted by the parser
            main([*words[1:], "--help"])
        assert info.value.code == 0


def test_a_workload_source_or_config_turns_the_demo_off(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    def ns(**kw: object) -> argparse.Namespace:
        base = dict(config=None, trace=None, lengths=None, arrival=None, rate=None, cv=None)
        return argparse.Namespace(**{**base, **kw})

    assert is_demo(ns()) and is_demo(ns(rate_scale=3.0))
    for kw in ({"trace": "azure-conv"}, {"lengths": "sharegpt"}, {"rate": 5.0},
               {"arrival": "gamma:cv=2"}, {"cv": 2.0}, {"config": "x.toml"}):
        assert not is_demo(ns(**kw)), kw
    # command-line options win over the demo's, and --requests replaces its window
    given = {"workload.rate_scale": 3.0, "workload.requests": 40, "workload.duration_s": None}
    merged = simulate_overrides(ns(), given)
    assert merged["workload.rate_scale"] == 3.0 and merged["workload.duration_s"] is None
    assert merged["workload.trace"] == "azure-code"
    # other workloads also get dopd beside the baselines, unless --policy or --config says
    assert simulate_overrides(ns(rate=5.0), {}) == {"policies": DEFAULT_POLICIES}
    assert simulate_overrides(ns(rate=5.0), {"policies": ("colocated",)}) == {
        "policies": ("colocated",)}
    assert simulate_overrides(ns(rate=5.0, config="x.toml"), {}) == {}
    out = tmp_path / "r.json"
    assert main(["simulate", "--rate", "30", "--requests", "50", "--policy", "colocated",
                 "--json", str(out)]) == 0
    assert "Next:" not in capsys.readouterr().out
    assert json.loads(out.read_text())["colocated"]["requests"] == 50


def test_demo_options_apply_to_the_demo(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert main(["simulate", "--requests", "80", "--policy", "colocated,dopd",
                 "--slo-ttft", "2", "--json", str(out), "-q"]) == 0
    records = json.loads(out.read_text())
    assert list(records) == ["colocated", "dopd"]
    assert records["dopd"]["requests"] == 80
    config = load_run_config(tmp_path / "r.config.toml")
    assert config.workload.trace == "azure-code" and config.slo.ttft_s == 2.0
    assert config.slo.tpot_s == DEMO_OVERRIDES["slo.tpot_s"]
