"""``dopd profile`` on the CPU engine: measure, fit, write a file ``--calibration`` accepts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dopd.cli.main import main
from dopd.perf import build_latency_model
from dopd.perf.chunked import ChunkedLatencyModel
from dopd.perf.chunked_calibration import chunked_from_dict, read_measurements, relative_errors


def test_profile_tiny_model_predicts_held_back_shapes(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out, steps = tmp_path / "cpu.json", tmp_path / "steps.csv"
    assert main(["profile", "--model", "dopd-tiny", "--device", "cpu", "--threads", "1",
                 "--grid", "tiny", "--repeats", "5", "--out", str(out),
                 "--steps-csv", str(steps)]) == 0
    assert "held back" in capsys.readouterr().out
    content = json.loads(out.read_text())
    coeffs = chunked_from_dict(content)
    measured = read_measurements(steps)
    assert {s.kind for s in measured} == {"prefill", "decode", "mixed"}
    held = measured[content["fit"]["steps"]:]
    assert len(held) == content["held_back"]["steps"] >= 3
    errors = np.abs(relative_errors(coeffs, held))
    print(f"held back: {[round(float(e), 3) for e in errors]}, "
          f"median {100 * np.median(errors):.1f} %")
    assert content["held_back"]["median_rel_error"] == pytest.approx(float(np.median(errors)),
                                                                     rel=1e-3)  # CSV rounding
    # Predicted vs measured on shapes the fit never saw (medians over repeats). Idle, this is
    # 7-10 %; with the 2 cores shared by other jobs single measurements swing by 30 % or more,
    # so the test only asks for a fit in the right range (a unit or shape error is far off).
    # The accuracy figure is reported by the command itself and in the README.
    assert np.median(errors) <= 0.6
    mixed = [s for s in measured if s.kind == "mixed"]
    assert np.median(np.abs(relative_errors(coeffs, mixed))) <= 0.8
    # the file is a calibration that every --calibration option accepts
    model = build_latency_model("llama-3-8b", "a100-80gb", 1, calibration=str(out))
    assert isinstance(model, ChunkedLatencyModel)
    capsys.readouterr()
    assert main(["perf", "--calibration", str(out), "--decode", "4x100", "--json"]) == 0
    step_ms = json.loads(capsys.readouterr().out)["step_ms"]
    assert step_ms == pytest.approx(coeffs.step_ms(0, 0, 0, 4, 400))


@pytest.mark.parametrize(("args", "message"), [
    (["--out", "x.txt"], "--out must be a .json file"),
    (["--out", "/proc/no/such/dir/x.json"], "cannot create the folder"),
    (["--out", "x.json", "--threads", "0"], "--threads must be >= 1"),
    (["--out", "x.json", "--steps-csv", "x.txt"], "--steps-csv must be a .csv"),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str],
                                               args: list[str], message: str) -> None:
    assert main(["profile", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dopd profile: error:") and message in err and "\n" not in err
