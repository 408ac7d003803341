"""``dopd experiment --backend ray``: the simulation jobs run as Ray tasks and give the same
results as the local run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dopd.cli.main import main
from dopd.data import TRACES_DIR
from dopd.experiments.suite_runner import ExperimentResult, run_suite
from dopd.experiments.suites import get_suite

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

TRACES = TRACES_DIR


def summary(result: ExperimentResult) -> dict[str, object]:
    """Per (scenario, policy): the search's probes and goodput, the comparison's outcomes."""
    out: dict[str, object] = {"loads": result.loads}
    for key, s in result.searches.items():
        out[f"{key} search"] = ([(p.load, p.attainment) for p in s.probes], s.goodput_rps)
    for key, c in result.comparisons.items():
        out[f"{key} run"] = (c.rate_rps, c.result.state.tolist(),
                             np.nan_to_num(c.result.finish_s).round(9).tolist())
    return out


def test_ray_tasks_give_the_local_results(ray_address: str) -> None:
    suite = get_suite("smoke").select(("shift-8b",), ())
    local = run_suite(suite, TRACES, workers=1)
    on_ray = run_suite(suite, TRACES, workers=2, backend="ray", ray_address=ray_address)
    assert summary(on_ray) == summary(local)
    assert list(on_ray.searches) == list(local.searches)


def test_cli_runs_the_smoke_suite_on_ray(ray_address: str, tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    assert main(["experiment", "smoke", "--out", str(out), "--scenarios", "shift-8b",
                 "--backend", "ray", "--ray-address", ray_address, "--quiet"]) == 0
    report = (out / "report.md").read_text()
    assert f"--backend ray --ray-address {ray_address}" in report
