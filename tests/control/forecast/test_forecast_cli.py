import json
from pathlib import Path

import pytest

import dopd.cli.main as cli_main

CODE = "azure-code"
SHAREGPT = "sharegpt"


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch):
    """``dopd`` through its real entry point, with only this command registered (so the test
    does not depend on the other command modules being importable)."""
    monkeypatch.setattr(cli_main, "COMMANDS", ("dopd.cli.forecast_cmd",))
    return cli_main.main


def test_forecast_is_a_registered_command() -> None:
    assert "dopd.cli.forecast_cmd" in cli_main.COMMANDS


def test_forecast_prints_tables_and_writes_json(run, capsys, tmp_path: Path) -> None:
    out = tmp_path / "scores.json"
    code = run(["forecast", "--trace", str(CODE), "--window", "60", "--models",
                "constant,ewma(0.3),arima(1,1,1)", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    for title in ("arrival rate", "mean input length", "mean output length", "ewma(0.3)",
                  "arima(1,1,1)", "coverage (q=0.9)"):
        assert title in text
    assert "*" in text  # the best model by MAE is starred
    data = json.loads(out.read_text())
    assert data["window_s"] == 60.0 and data["windows"] == 57 and data["requests"] == 8819
    assert set(data["scores"]) == {"rate", "mean_in", "mean_out"}
    rate = data["scores"]["rate"]
    assert set(rate) == {"constant", "ewma(0.3)", "arima(1,1,1)"}
    best = min(rate, key=lambda m: rate[m]["mae"])
    assert data["best"]["rate"]["mae"] == best


def _write_csv(path: Path, rows: list[tuple[float, int, int]]) -> Path:
    body = "".join(f"{a},{p},{o}\n" for a, p, o in rows)
    path.write_text("arrival_s,prompt_tokens,output_tokens\n" + body)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "constant,prophet"], "unknown forecaster 'prophet'"),
        (["--models", "ewma(7)"], "EWMA alpha"),
        (["--models", "arima(1,1"], "unbalanced"),
        (["--window", "0"], "--window must be > 0"),
        (["--window", "-30"], "--window must be > 0"),
        (["--quantile", "1.5"], "--quantile"),
        (["--window", "1000"], "less than one 1000 s window"),
    ],
)
def test_bad_options_exit_2(run, capsys, tmp_path: Path, args: list[str], message: str) -> None:
    trace = _write_csv(tmp_path / "t.csv", [(float(t), 100 + t, 10) for t in range(300)])
    assert run(["forecast", "--trace", str(trace), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dopd forecast: error: ") and message in err
    assert err.count("\n") == 1


def test_trace_problems_exit_2(run, capsys, tmp_path: Path) -> None:
    assert run(["forecast", "--trace", str(tmp_path / "missing.csv")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,10,1\n1.0,abc,1\n")
    assert run(["forecast", "--trace", str(bad)]) == 2
    assert "error" in capsys.readouterr().err
    assert run(["forecast", "--trace", SHAREGPT]) == 2
    assert "no arrival times" in capsys.readouterr().err


def test_unwritable_json_exits_2(run, capsys, tmp_path: Path) -> None:
    trace = _write_csv(tmp_path / "t.csv", [(float(t), 100 + t, 10) for t in range(300)])
    code = run(["forecast", "--trace", str(trace), "--window", "20", "--models", "constant",
                "--json", str(tmp_path / "no" / "such" / "dir.json")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
