"""Report writers: strict JSON, per-request and timeline CSVs, the comparison table."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from dopd.bench.report import (
    REQUEST_COLUMNS,
    comparison_table,
    format_cell,
    has_miss,
    print_comparison,
    request_columns,
    safe_name,
    summary_record,
    to_jsonable,
    write_json,
    write_requests_csv,
    write_timeline_csv,
)
from dopd.metrics.summary import summarize_result
from dopd.sim.api import SimResult, Timeline
from dopd.types import SLO, RequestState, Role

NAN = float("nan")


def hand_made_result() -> SimResult:
    """Four requests: a normal one, a one-token one, a rejected one, an aborted one."""
    states = [RequestState.FINISHED, RequestState.FINISHED, RequestState.REJECTED,
              RequestState.ABORTED]
    timeline = Timeline(
        time_s=np.array([0.0, 1.0, 2.0]),
        prefill_instances=np.array([1, 1, 2]),
        decode_instances=np.array([1, 1, 0]),
        mixed_instances=np.array([0, 0, 0]),
        arrivals_rps=np.array([2.0, 1.0, 1.0]),
        queued_prefill_tokens=np.array([100, 0, 0]),
        running_decodes=np.array([1, 2, 0]),
    )
    return SimResult(
        policy="static:1:1",
        request_id=np.arange(4),
        arrival_s=np.array([0.0, 0.5, 1.0, 1.5]),
        prompt_tokens=np.array([100, 200, 300, 400]),
        output_tokens=np.array([11, 1, 5, 5]),
        state=np.array([int(s) for s in states]),
        first_token_s=np.array([0.2, 0.9, NAN, 1.8]),
        finish_s=np.array([1.2, 0.9, NAN, NAN]),
        prefill_instance=np.array([0, 0, -1, 0]),
        decode_instance=np.array([1, 1, -1, 1]),
        timeline=timeline,
        gpu_seconds=6.0,
        switches=1,
        kv_bytes_moved=1e6,
        sim_end_s=3.0,
        events=42,
        wall_s=0.01,
        reason={2: "admission", 3: "kv transfer, timeout"},
    )


def test_safe_name() -> None:
    assert safe_name("static:4:4") == "static_4_4"
    assert safe_name(" dopd ") == "dopd"
    assert safe_name("a/b\\c") == "a_b_c"
    assert safe_name("::") == "unnamed"


def test_to_jsonable_is_strict_and_plain() -> None:
    data = {
        "f": np.float32(0.5), "i": np.int64(3), "nan": NAN, "inf": np.inf,
        "arr": np.array([1.0, NAN]), "t": (1, 2), "role": Role.PREFILL,
        "state": RequestState.FINISHED, "slo": SLO(0.5, 0.1), "p": Path("x/y"),
    }
    out = to_jsonable(data)
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == {
        "f": 0.5, "i": 3, "nan": None, "inf": None, "arr": [1.0, None], "t": [1, 2],
        "role": "prefill", "state": 4, "slo": {"ttft_s": 0.5, "tpot_s": 0.1, "attainment": 0.9},
        "p": "x/y",
    }
    with pytest.raises(TypeError):
        to_jsonable({"x": object()})


def test_write_json(tmp_path: Path) -> None:
    p = write_json(tmp_path / "sub" / "r.json", {"colocated": {"ttft_p90": np.float64(0.25)}})
    assert json.loads(p.read_text()) == {"colocated": {"ttft_p90": 0.25}}


def test_request_columns_follow_the_metric_definitions() -> None:
    cols = request_columns(hand_made_result())
    assert list(cols) == list(REQUEST_COLUMNS)
    assert cols["ttft_s"][0] == pytest.approx(0.2)
    assert cols["tpot_s"][0] == pytest.approx(1.0 / 10)
    assert math.isnan(cols["tpot_s"][1])  # one-token output: TPOT undefined
    assert cols["e2e_s"][1] == pytest.approx(0.4)
    assert math.isnan(cols["ttft_s"][2]) and math.isnan(cols["e2e_s"][3])
    assert cols["ttft_s"][3] == pytest.approx(0.3)
    assert list(cols["state"]) == ["FINISHED", "FINISHED", "REJECTED", "ABORTED"]
    assert list(cols["reason"]) == ["", "", "admission", "kv transfer, timeout"]


def test_requests_csv(tmp_path: Path) -> None:
    p = write_requests_csv(tmp_path / "req.csv", hand_made_result())
    rows = list(csv.DictReader(io.StringIO(p.read_text())))
    assert len(rows) == 4
    assert tuple(rows[0]) == REQUEST_COLUMNS
    assert float(rows[0]["tpot_s"]) == pytest.approx(0.1)
    assert rows[1]["tpot_s"] == "" and rows[2]["first_token_s"] == ""
    assert rows[3]["reason"] == "kv transfer, timeout"  # quoted comma survives
    assert rows[2]["prefill_instance"] == "-1"


def test_timeline_csv(tmp_path: Path) -> None:
    p = write_timeline_csv(tmp_path / "tl.csv", hand_made_result().timeline)
    rows = list(csv.DictReader(io.StringIO(p.read_text())))
    assert [r["prefill_instances"] for r in rows] == ["1", "1", "2"]
    assert float(rows[0]["arrivals_rps"]) == 2.0


def render(table: object) -> str:
    console = Console(file=io.StringIO(), width=250, color_system=None)
    console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_comparison_table_formats_and_skips_absent_columns() -> None:
    records = {
        "colocated": {"requests": 300, "attainment": 0.9567, "tpot_p90": 0.0456, "ttft_p90": NAN},
        "static:4:4": {"requests": 300, "attainment": 1.0, "tpot_p90": 0.031},
    }
    text = render(comparison_table(records, title="cmp"))
    assert "colocated" in text and "static:4:4" in text
    assert "95.7" in text and "100.0" in text  # attainment as a percentage
    assert "45.6" in text and "31.0" in text  # TPOT in milliseconds
    assert "TTFT p90" in text and "-" in text  # NaN shows as '-'
    assert "max goodput" not in text and "GPU-s" not in text  # absent from every record
    buf = Console(file=io.StringIO(), width=250, color_system=None)
    print_comparison(records, console=buf)
    assert "static:4:4" in buf.file.getvalue()  # type: ignore[attr-defined]


def test_a_missed_percentile_is_null_in_json_and_miss_in_the_table(tmp_path: Path) -> None:
    result = hand_made_result()  # 1 of 4 rejected, 1 aborted after its first token
    summary = summarize_result(result, SLO(1.0, 1.0))
    record = summary_record("dopd", summary, gpus=2)
    assert record["rejected_share"] == 0.25
    assert record["ttft_p90"] == math.inf  # the rejected request sits at the top
    assert record["ttft_p90_served"] == pytest.approx(float(np.percentile([0.2, 0.4, 0.3], 90)))
    assert record["ttft_unreached_share"] == 0.25 and record["e2e_unreached_share"] == 0.5
    data = json.loads(write_json(tmp_path / "r.json", {"dopd": record}).read_text())["dopd"]
    assert data["ttft_p90"] is None and data["e2e_p99"] is None  # a miss is null
    assert data["ttft_p90_served"] == pytest.approx(record["ttft_p90_served"])
    assert data["ttft_p50"] == pytest.approx(record["ttft_p50"])  # finite: kept
    text = render(comparison_table({"dopd": record}))
    assert "rejected %" in text and "25.0" in text
    row = next(line for line in text.splitlines() if "dopd" in line)
    assert row.count("miss") >= 3  # TTFT p90, p99 and E2E p90
    buf = Console(file=io.StringIO(), width=250, color_system=None)
    print_comparison({"dopd": record}, console=buf)
    assert "served-only figures" in buf.file.getvalue()  # type: ignore[attr-defined]
    assert format_cell(math.inf, "ms") == "miss" and format_cell(None, "ms") == "-"
    assert not has_miss({"x": {"ttft_p90": 0.2}}) and has_miss({"dopd": record})
