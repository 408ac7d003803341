"""``dopd experiment`` end to end on the smoke suite, and its errors."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from dopd.bench import plots
from dopd.bench.plots import save_figure
from dopd.cli.main import main
from dopd.data import TRACES_DIR, get_dataset
from dopd.errors import DopdError
from dopd.experiments import figures
from dopd.experiments.sources import resolve
from dopd.experiments.suite_runner import drop_unregistered
from dopd.experiments.suites import get_suite

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from figure_checks import assert_dopd_on_top, assert_lines_distinct, assert_readable

TRACES = TRACES_DIR


def tables(markdown: str) -> list[list[list[str]]]:
    """Every Markdown table as rows of cells (header first, separator dropped)."""
    out: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r"-+", c) for c in cells):
                current.append(cells)
        elif current:
            out.append(current)
            current = []
    return out


def number(cell: str) -> float | None:
    """A table cell as a number: ``-`` is None, ``miss`` (a missed percentile) is inf."""
    return None if cell == "-" else math.inf if cell == "miss" else float(cell)


@pytest.mark.slow
def test_smoke_suite_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []
    names = list(drop_unregistered(get_suite("smoke"))[0].policies)

    def check_then_save(fig: Figure, path: str | Path) -> Path:
        # every figure of the report reads at a glance, and dopd is drawn over the others
        assert_readable(fig)
        for ax in fig.axes:
            if any(line.get_label() == "dopd" for line in ax.get_lines()):
                assert_dopd_on_top(ax, names)
                assert_lines_distinct(ax, names)
        checked.append(Path(path).name)
        return save_figure(fig, path)

    monkeypatch.setattr(plots, "save_figure", check_then_save)
    monkeypatch.setattr(figures, "save_figure", check_then_save)
    out = tmp_path / "smoke"
    assert main(["experiment", "smoke", "--out", str(out), "--workers", "2"]) == 0
    assert sorted(checked) == sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    policies = drop_unregistered(get_suite("smoke"))[0].policies
    assert "dopd" in policies
    err = capsys.readouterr().err
    assert re.search(r"\[\d+/\d+\] shift-8b dopd: max goodput", err)
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "results.json", "config.json", "goodput.png",
            "attainment_conv-8b.png", "cdf_conv-8b.png", "attainment_shift-8b.png",
            "cdf_shift-8b.png", "timeline_shift-8b.png"} <= names
    assert all((out / n).stat().st_size > 1000 for n in names if n.endswith(".png"))

    report = (out / "report.md").read_text()
    assert "dopd experiment smoke --out" in report
    per_scenario = [t for t in tables(report) if t[0][:3] == ["policy", "role",
                                                                "max goodput r/s"]]
    assert len(per_scenario) == 2
    results = json.loads((out / "results.json").read_text())
    for table, scenario in zip(per_scenario, results["scenarios"].values(), strict=True):
        assert [row[0] for row in table[1:]] == list(policies)
        col = {name: i for i, name in enumerate(table[0])}
        for row in table[1:]:
            values = [number(c) for c in row[2:5] + row[6:]]
            assert values[0] is not None and values[0] > 0
            assert 0 <= number(row[6]) <= 100  # type: ignore[operator]
            record = scenario["policies"][row[0]]
            rejected = number(row[col["rejected %"]])
            assert rejected == pytest.approx(100 * record["rejected_share"], abs=0.05)
            honest, served = number(row[col["P90 TTFT s"]]), number(row[col["served P90 TTFT s"]])
            assert honest is not None and served is not None and served <= honest + 5e-4
            assert (record["ttft_p90"] is None) == math.isinf(honest)  # a miss is null
            assert record["ttft_p90_served"] == pytest.approx(served, abs=5e-4)
    verdict_table = next(t for t in tables(report) if t[0][:2] == ["scenario", "target"])
    assert {row[3] for row in verdict_table[1:]} <= {"met", "MISSED", "n/a"}
    assert len(verdict_table) > 1
    ablations = next(t for t in tables(report) if t[0][:2] == ["scenario", "ablation"])
    assert len(ablations) - 1 == 2 * sum(p.startswith("dopd:") for p in policies)

    assert results["suite"] == "smoke" and results["workers"] == 2
    for name, scenario in results["scenarios"].items():
        assert list(scenario["policies"]) == list(policies), name
        for record in scenario["policies"].values():
            assert record["max_goodput_rps"] > 0 and record["probes"]
            assert 0 <= record["attainment"] <= 1
        assert scenario["comparison_load"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["suite"]["name"] == "smoke" and len(config["suite"]["scenarios"]) == 2
    assert config["traces_dir"] == str(TRACES_DIR.resolve())  # the shipped data by default


@pytest.mark.parametrize(("args", "message"), [
    (["--workers", "0"], "--workers must be between 1"),
    (["--workers", "999"], "--workers must be between 1"),
    (["--scenarios", "nope"], "no scenario 'nope'"),
    (["--policies", "colocated,bogus"], "policy bogus is not registered"),
    (["--traces-dir", "/nonexistent/traces"], "traces directory not found"),
    (["--oracle", "--model-bias", "0.1"], "--oracle takes no"),
    (["--model-bias", "5"], "model bias must be in"),
])
def test_bad_input_exits_2_with_one_line(args: list[str], message: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "smoke", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not (tmp_path / "o").exists()


def test_out_must_be_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["experiment", "smoke", "--out", str(target)]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_unknown_suite_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["experiment", "nosuch"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_suite_trace_paths_resolve_names_then_the_traces_dir(tmp_path: Path) -> None:
    own = tmp_path / "mine" / "t.csv"
    own.parent.mkdir()
    own.write_text("arrival_s,prompt_tokens,output_tokens\n0,5,5\n")
    assert resolve("azure-conv", tmp_path) == get_dataset("azure-conv").path
    assert resolve("mine/t.csv", tmp_path) == own
    assert resolve(str(own), TRACES) == own
    relative = get_dataset("sharegpt").file.removeprefix("traces/")
    assert resolve(relative, TRACES_DIR) == get_dataset("sharegpt").path
    with pytest.raises(DopdError, match="trace file not found"):
        resolve("mine/none.csv", tmp_path)
