"""Result reports: JSON and CSV writers and rich comparison tables.

Everything here is presentation: the numbers come from ``dopd.metrics.summary`` and the simulator.
JSON output is strict (no NaN/Infinity: missing values and missed percentiles, ``math.inf`` in
memory, are written as ``null``). Tables show a missed percentile as :data:`MISS` and an
undefined value as ``-``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from dopd.metrics.summary import MetricsSummary
from dopd.sim.api import SimResult, Timeline
from dopd.types import RequestState

MISS = "miss"
"""Table mark of a percentile that lands on a request that never got there (``math.inf``)."""

MISS_NOTE = ("miss: the percentile lands on a request that never got there (rejected, aborted or "
             "unfinished: counted as infinitely late); served-only figures are in the JSON as "
             "*_served")
"""Footnote printed under a table that shows :data:`MISS`."""

COMPARISON_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("requests", "requests", "{:.0f}"),
    ("attainment", "attain %", "pct"),
    ("goodput_rps", "goodput r/s", "{:.2f}"),
    ("rejected_share", "rejected %", "pct"),
    ("ttft_p50", "TTFT p50 s", "{:.3f}"),
    ("ttft_p90", "TTFT p90 s", "{:.3f}"),
    ("ttft_p99", "TTFT p99 s", "{:.3f}"),
    ("tpot_p50", "TPOT p50 ms", "ms"),
    ("tpot_p90", "TPOT p90 ms", "ms"),
    ("tpot_p99", "TPOT p99 ms", "ms"),
    ("e2e_p90", "E2E p90 s", "{:.2f}"),
    ("gpu_seconds", "GPU-s", "{:.0f}"),
    ("switches", "switches", "{:.0f}"),
    ("max_goodput_rps", "max goodput r/s", "{:.2f}"),
    ("max_goodput_rps_per_gpu", "per GPU", "{:.3f}"),
)
"""(record key, column header, format) of the comparison table; ``pct`` shows a fraction as a
percentage, ``ms`` shows seconds as milliseconds. Keys absent from every record are skipped.
The percentiles are honest (``dopd.metrics.percentiles``), so the rejected share sits beside
them."""

REQUEST_COLUMNS: tuple[str, ...] = (
    "request_id",
    "arrival_s",
    "prompt_tokens",
    "output_tokens",
    "state",
    "first_token_s",
    "finish_s",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "prefill_instance",
    "decode_instance",
    "reason",
)
"""Columns of the per-request CSV, in order."""


def safe_name(name: str) -> str:
    """A file-name-safe form of a policy name (``static:4:4`` -> ``static_4_4``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("_")
    return cleaned or "unnamed"


def to_jsonable(obj: Any) -> Any:
    """Convert numpy values, enums, dataclasses, paths and tuples to plain JSON data.

    Non-finite floats become None, so the output is strict JSON.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Enum):
        return obj.value if isinstance(obj.value, str | int) else obj.name
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` (see :func:`to_jsonable`) as indented strict JSON; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")
    return p


def request_columns(result: SimResult) -> dict[str, np.ndarray]:
    """Per-request columns of ``result`` (see :data:`REQUEST_COLUMNS`), derived latencies included.

    ``ttft_s``, ``tpot_s`` and ``e2e_s`` follow DESIGN.md: NaN where undefined (never started,
    never finished, or a one-token output for TPOT). ``state`` is the state's name.
    """
    arrival = np.asarray(result.arrival_s, dtype=float)
    first = np.asarray(result.first_token_s, dtype=float)
    finish = np.asarray(result.finish_s, dtype=float)
    out_tok = np.asarray(result.output_tokens, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out_tok > 1, (finish - first) / np.maximum(out_tok - 1, 1), np.nan)
    rid = np.asarray(result.request_id, dtype=np.int64)
    return {
        "request_id": rid,
        "arrival_s": arrival,
        "prompt_tokens": np.asarray(result.prompt_tokens, dtype=np.int64),
        "output_tokens": out_tok,
        "state": np.array([RequestState(int(s)).name for s in result.state], dtype=object),
        "first_token_s": first,
        "finish_s": finish,
        "ttft_s": first - arrival,
        "tpot_s": tpot,
        "e2e_s": finish - arrival,
        "prefill_instance": np.asarray(result.prefill_instance),
        "decode_instance": np.asarray(result.decode_instance),
        "reason": np.array([result.reason.get(int(i), "") for i in rid], dtype=object),
    }


def summary_record(policy: str, summary: MetricsSummary, gpus: int | None) -> dict[str, Any]:
    """The fields every result record shares (``dopd simulate``, ``dopd bench``): counts,
    attainment, goodput (per GPU when ``gpus`` is known), ``rejected_share``, the honest
    TTFT/TPOT/E2E percentiles (``math.inf`` for a miss, ``null`` once written as JSON), the
    share of each metric's population that never got there (``{ttft,tpot,e2e}_unreached_share``)
    and the served-only percentiles (``{ttft,tpot,e2e}_{p50,p90,p99}_served``)."""
    s = summary
    record: dict[str, Any] = {
        "policy": policy,
        "requests": s.requests,
        "finished": s.finished,
        "rejected": s.rejected,
        "aborted": s.aborted,
        "met": s.met,
        "attainment": s.attainment,
        "goodput_rps": s.goodput_rps,
        "goodput_rps_per_gpu": None if gpus is None else s.goodput_rps / gpus,
        "rejected_share": s.rejected_share,
    }
    for name in ("ttft", "tpot", "e2e"):
        for q in ("p50", "p90", "p99"):
            record[f"{name}_{q}"] = getattr(s, f"{name}_{q}")
    for name in ("ttft", "tpot", "e2e"):
        record[f"{name}_unreached_share"] = getattr(s, f"{name}_unreached_share")
        for q in ("p50", "p90", "p99"):
            record[f"{name}_{q}_served"] = getattr(s, f"{name}_{q}_served")
    return record


def _csv_cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return "" if not math.isfinite(float(value)) else repr(float(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def write_columns_csv(path: str | Path, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> Path:
    """Write equal-length columns as a CSV with a header; NaN cells are left empty."""
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns differ in length: {sorted(lengths)}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(columns))
        for row in zip(*columns.values(), strict=True):
            writer.writerow([_csv_cell(v) for v in row])
    return p


def write_requests_csv(path: str | Path, result: SimResult) -> Path:
    """Write one row per request of ``result`` (columns :data:`REQUEST_COLUMNS`)."""
    return write_columns_csv(path, request_columns(result))


def write_timeline_csv(path: str | Path, timeline: Timeline) -> Path:
    """Write the sampled cluster timeline (one row per sample)."""
    cols = {f.name: np.asarray(getattr(timeline, f.name)) for f in dataclasses.fields(timeline)}
    return write_columns_csv(path, cols)


def format_cell(value: Any, fmt: str) -> str:
    """One table cell: ``-`` for None or NaN, :data:`MISS` for ``inf``, else ``fmt`` (a format
    string, ``pct`` or ``ms``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return MISS
    if isinstance(value, str):  # a value that is not a number, such as "miss", shown as is
        return value
    if fmt == "pct":
        return f"{100.0 * float(value):.1f}"
    if fmt == "ms":
        return f"{1000.0 * float(value):.1f}"
    return fmt.format(float(value))


def comparison_table(
    records: Mapping[str, Mapping[str, Any]],
    title: str | None = None,
    columns: Sequence[tuple[str, str, str]] = COMPARISON_COLUMNS,
) -> Table:
    """A rich table with one row per policy (keyed as in ``records``) and one column per metric.

    Columns whose key is absent from every record are left out; a missing value shows as ``-``,
    a missed percentile as :data:`MISS`.
    """
    present = [c for c in columns if any(c[0] in r for r in records.values())]
    table = Table(title=title, header_style="bold")
    table.add_column("policy", style="cyan", no_wrap=True)
    for _key, header, _fmt in present:
        table.add_column(header, justify="right")
    for policy, record in records.items():
        table.add_row(policy, *(format_cell(record.get(key), fmt) for key, _h, fmt in present))
    return table


def print_comparison(
    records: Mapping[str, Mapping[str, Any]],
    console: Console | None = None,
    title: str | None = None,
) -> None:
    """Print :func:`comparison_table` to ``console`` (stdout by default), with
    :data:`MISS_NOTE` under it when a shown percentile is a miss."""
    out = console or Console()
    out.print(comparison_table(records, title=title))
    if has_miss(records):
        out.print(MISS_NOTE, style="dim")


def has_miss(records: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether a comparison-table column of any record holds a miss (``inf``)."""
    keys = [key for key, _h, _f in COMPARISON_COLUMNS]
    return any(isinstance(r.get(k), float) and math.isinf(r[k]) for r in records.values()
               for k in keys)
