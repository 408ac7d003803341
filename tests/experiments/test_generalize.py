"""``dopd experiment generalize`` end to end on a tiny scenario: the run, its determinism, the
analysis, the report files and the CLI's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dopd.cli.main import main
from dopd.data import TRACES_DIR
from dopd.experiments.gen_space import GenScenario, build
from dopd.experiments.generalize_analysis import geomean, ratio, verdict
from dopd.experiments.generalize_report import write_generalize_report
from dopd.experiments.generalize_run import CURVE, GeneralizeResult, run_generalize
from dopd.experiments.generalize_tasks import ScanSettings
from dopd.experiments.realism import Realism
from dopd.experiments.suite import SyntheticSource
from dopd.sim.api import SimConfig

TINY = ScanSettings(scales=(0.25, 1.0, 4.0), rel_tol=0.5, max_bisect=1, extend=0)


def tiny(name: str = "tiny", shift: str = "none") -> GenScenario:
    return build(name, "tiny", lambda rate, d: SyntheticSource(
        f"poisson:rate={rate:g}", "lognormal:prompt_mean=800,prompt_cv=1,output_mean=60,"
        "output_cv=1"), SimConfig(instances=2), "balanced", 1.0, 30, family="lognormal",
        arrival="poisson", shift=shift, size="8b", duration_s=10.0)


def run(seed: int = 0) -> GeneralizeResult:
    return run_generalize((tiny("a"), tiny("b", "mix")), seed, TRACES_DIR, 1,
                          realism=Realism(), settings=TINY)


@pytest.fixture(scope="module")
def result() -> GeneralizeResult:
    return run()


@pytest.mark.slow
def test_every_contender_is_searched_and_the_curve_follows_the_strongest(
        result: GeneralizeResult) -> None:
    names = [c.name for c in result.contenders["a"]]
    assert names == ["colocated", "static:best", "colocated+fair", "static+fair",
                     "distserve", "dopd"]
    assert len(result.scans) == 2 * len(names)
    for scenario in ("a", "b"):
        strongest = result.strongest[scenario]
        best = max(result.scans[(scenario, n)].goodput_rps for n in names if n != "dopd")
        assert result.scans[(scenario, strongest)].goodput_rps == best
        curve = result.curves[(scenario, "dopd")]
        assert [p.load for p in curve.probes] == [round(k * result.curve_base[scenario], 6)
                                                  for k in CURVE]
        assert (scenario, strongest) in result.curves
        assert (scenario, "colocated") in result.curves
    # realism: every scenario has its own seeded truth
    assert not result.scenarios[0].scenario.cluster.truth.is_oracle


@pytest.mark.slow
def test_same_seed_same_results(result: GeneralizeResult) -> None:
    again = run()
    for key, scan in result.scans.items():
        other = again.scans[key]
        assert scan.result == other.result
        assert [p.attainment for p in scan.probes] == [p.attainment for p in other.probes]


@pytest.mark.slow
def test_report_files(result: GeneralizeResult, tmp_path: Path) -> None:
    paths, summary = write_generalize_report(result, tmp_path, "dopd experiment generalize")
    assert {p.name for p in paths} == {"report.md", "results.json", "ratios.png",
                                       "verdicts.png", "curves.png"}
    md = (tmp_path / "report.md").read_text()
    assert "## The five worst scenarios" in md and "| target (issue 11) |" in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["scenarios"]) == 2
    s0 = data["scenarios"][0]
    assert set(s0["policies"]) == set(n for _, n in result.scans if _ == "a")
    search = s0["policies"]["dopd"]["search"]
    assert {"crossings", "monotone", "light_load_failure", "scan"} <= set(search)
    assert summary.wins["win"] + summary.wins["tie"] + summary.wins["loss"] == 2
    assert summary.nonstationary == 1


def test_ratio_conventions() -> None:
    assert ratio(2.0, 1.0) == 2.0 and ratio(0.0, 0.0) == 1.0 and ratio(1.0, 0.0) == 100.0
    assert geomean([4.0, 1.0]) == pytest.approx(2.0)
    assert geomean([0.0]) == pytest.approx(0.01)
    assert [verdict(x) for x in (1.02, 0.96, 1.2)] == ["tie", "loss", "win"]


@pytest.mark.parametrize(("args", "message"), [
    (["--scenarios", "x"], "number of scenarios"),
    (["--scenarios", "2", "--names", "long-context"], "not both"),
    (["--names", "nosuch"], "unknown scenario"),
    (["--proposed", "nosuch"], "not registered"),
    (["--proposed", "dopd:bogus=1"], "no option 'bogus'"),
    (["--proposed", "dopd:mixstep=0"], "mixstep"),
    (["--requests", "5"], "--requests"),
    (["--policies", "dopd"], "--proposed"),
])
def test_generalize_bad_input_exits_2(args: list[str], message: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert main(["experiment", "generalize", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_generalize_options_are_refused_for_suites(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "smoke", "--out", str(tmp_path / "o"), "--seed", "3"]) == 2
    assert "generalize only" in capsys.readouterr().err
