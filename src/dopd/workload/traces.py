"""Loaders for request traces and a CSV writer.

Every loader takes a path or the name of a dataset shipped in :mod:`dopd.data` (``azure-conv``,
``azure-code``, ``mooncake``, ``sharegpt``; see ``dopd data list``).

Formats, detected from the content (the header or the first JSON object), never the extension:

- ``azure``: Azure LLM inference trace CSV (2023/2024): ``TIMESTAMP`` (absolute datetime, up to
  9 fractional digits, no time zone), ``ContextTokens``, ``GeneratedTokens``.
- ``mooncake``: JSON lines with ``timestamp`` (ms from start), ``input_length``,
  ``output_length`` and optional ``hash_ids`` (prefix blocks of 512 tokens, kept as
  :class:`~dopd.workload.base.PrefixBlocks` unless ``prefix=False``).
- ``sharegpt``: a lengths-only CSV with ``num_prefill_tokens`` and ``num_decode_tokens``; it has
  no arrival times and loads as a :class:`~dopd.workload.lengths.LengthTable` (combine it with an
  arrival process through :func:`dopd.workload.synthetic.synthetic_workload`).
- ``dopd``: the CSV that :func:`save_workload` writes: ``arrival_s``, ``prompt_tokens``,
  ``output_tokens`` (seconds, tokens).

Columns are found by name (case-insensitive), extra columns are ignored, CR/LF line ends and a
UTF-8 BOM are accepted and blank lines are skipped. Policies:

- arrival times become offsets from the earliest one; rows out of time order are stable-sorted
  by arrival (ties keep file order), never rejected;
- a prompt length < 1 or an output length < 0 is an error; an output length of exactly 0 is
  clamped to 1 (the request still costs a prefill and yields its first token) unless
  ``zero_output="reject"``;
- any unreadable row is an error naming the file, the line and the reason.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from dopd.data import resolve_dataset
from dopd.errors import DopdError, require
from dopd.workload.base import LengthTable, PrefixBlocks, Workload

TRACE_FORMATS = ("azure", "mooncake", "sharegpt", "dopd")

_CSV_COLUMNS = {
    "azure": ("timestamp", "contexttokens", "generatedtokens"),
    "sharegpt": ("num_prefill_tokens", "num_decode_tokens"),
    "dopd": ("arrival_s", "prompt_tokens", "output_tokens"),
}
_MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")


def _read_text(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DopdError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    require(text.strip() != "", f"trace file is empty: {path}")
    return text


def _format_of(text: str, path: str | Path) -> str:
    head = text.lstrip()
    if head.startswith("{"):
        first = head.split("\n", 1)[0]
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            raise DopdError(f"{path}: unknown trace format (first line is bad JSON)") from None
        if isinstance(row, dict) and all(key in row for key in _MOONCAKE_KEYS):
            return "mooncake"
        raise DopdError(f"{path}: unknown trace format (JSON without {', '.join(_MOONCAKE_KEYS)})")
    header = {name.strip().lower() for name in head.split("\n", 1)[0].rstrip("\r").split(",")}
    for fmt, columns in _CSV_COLUMNS.items():
        if header.issuperset(columns):
            return fmt
    raise DopdError(f"{path}: unknown trace format (header {sorted(header)}; known formats: "
                    f"{', '.join(TRACE_FORMATS)})")


def detect_format(path: str | Path) -> str:
    """The format name of the trace at ``path`` (a file or a dataset name; one of
    :data:`TRACE_FORMATS`)."""
    resolved = resolve_dataset(path)
    return _format_of(_read_text(resolved), resolved)


def _csv_rows(
    text: str, path: str | Path, wanted: Sequence[str]
) -> tuple[dict[str, list[str]], list[int]]:
    """Named columns as lists of strings, plus the 1-based file line number of every row."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    header = [name.strip().lower() for name in lines[0].split(",")]
    for name in wanted:
        require(name in header, f"{path}: missing column {name!r} in header {lines[0]!r}")
    numbers = [i + 1 for i, line in enumerate(lines) if i > 0 and line.strip()]
    require(numbers != [], f"{path}: header but no rows")
    rows = [lines[n - 1].split(",") for n in numbers]
    width = len(header)
    for number, row in zip(numbers, rows, strict=True):
        if len(row) != width:
            raise DopdError(f"{path}:{number}: expected {width} fields, got {len(row)}")
    columns = list(zip(*rows, strict=True))
    return {name: list(columns[header.index(name)]) for name in wanted}, numbers


def _first_bad(values: Sequence[Any], numbers: Sequence[int], parse: Any) -> int:
    for value, number in zip(values, numbers, strict=True):
        try:
            parse(value)
        except (ValueError, TypeError):
            return number
    return numbers[-1]


def _ints(values: Sequence[Any], numbers: Sequence[int], path: str | Path, what: str) -> np.ndarray:
    try:
        return np.array(values, dtype=np.int64)
    except (ValueError, TypeError, OverflowError):
        pass
    try:
        floats = np.array(values, dtype=np.float64)
    except (ValueError, TypeError):
        number = _first_bad(values, numbers, float)
        raise DopdError(f"{path}:{number}: {what} is not a number") from None
    bad = ~np.isfinite(floats) | (floats != np.round(floats))
    if bad.any():
        raise DopdError(f"{path}:{numbers[int(np.argmax(bad))]}: {what} is not a whole number")
    return floats.astype(np.int64)


def _lengths(
    prompt: np.ndarray, output: np.ndarray, numbers: Sequence[int], path: str | Path,
    zero_output: str,
) -> np.ndarray:
    require(
        zero_output in ("clamp", "reject"),
        f"zero_output must be clamp or reject, got {zero_output!r}",
    )
    for values, what, low in ((prompt, "prompt length", 1), (output, "output length", 0)):
        bad = values < low
        if bad.any():
            i = int(np.argmax(bad))
            raise DopdError(f"{path}:{numbers[i]}: {what} {values[i]} must be >= {low}")
    zero = output == 0
    if zero.any() and zero_output == "reject":
        raise DopdError(f"{path}:{numbers[int(np.argmax(zero))]}: output length is 0")
    return np.maximum(output, 1)


def _timestamps(values: list[str], numbers: list[int], path: str | Path) -> np.ndarray:
    values = [value.strip() for value in values]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns on time-zone suffixes; it converts to UTC
        try:
            stamps = np.array(values, dtype="datetime64[ns]")
        except ValueError:
            number = _first_bad(values, numbers, lambda v: np.datetime64(v, "ns"))
            raise DopdError(f"{path}:{number}: TIMESTAMP is not a date-time") from None
    if np.isnat(stamps).any():
        raise DopdError(f"{path}:{numbers[int(np.argmax(np.isnat(stamps)))]}: TIMESTAMP is empty")
    offsets = (stamps - stamps.min()).astype(np.int64)
    return offsets.astype(np.float64) / 1e9


def _load_csv(text: str, path: Path, fmt: str, zero_output: str) -> Workload | LengthTable:
    columns, numbers = _csv_rows(text, path, _CSV_COLUMNS[fmt])
    if fmt == "sharegpt":
        prompt = _ints(columns["num_prefill_tokens"], numbers, path, "num_prefill_tokens")
        output = _ints(columns["num_decode_tokens"], numbers, path, "num_decode_tokens")
        return LengthTable(path.stem, prompt, _lengths(prompt, output, numbers, path, zero_output))
    if fmt == "azure":
        arrival = _timestamps(columns["timestamp"], numbers, path)
        prompt = _ints(columns["contexttokens"], numbers, path, "ContextTokens")
        output = _ints(columns["generatedtokens"], numbers, path, "GeneratedTokens")
    else:
        try:
            arrival = np.array(columns["arrival_s"], dtype=np.float64)
        except ValueError:
            number = _first_bad(columns["arrival_s"], numbers, float)
            raise DopdError(f"{path}:{number}: arrival_s is not a number") from None
        bad = ~np.isfinite(arrival) | (arrival < 0)
        if bad.any():
            number = numbers[int(np.argmax(bad))]
            raise DopdError(f"{path}:{number}: arrival_s must be finite and >= 0")
        prompt = _ints(columns["prompt_tokens"], numbers, path, "prompt_tokens")
        output = _ints(columns["output_tokens"], numbers, path, "output_tokens")
    output = _lengths(prompt, output, numbers, path, zero_output)
    return Workload.from_arrays(path.stem, arrival, prompt, output)


def _check_mooncake_row(row: Any) -> None:
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    for key in _MOONCAKE_KEYS:
        value = row.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} missing or not a number")
    if not isinstance(row.get("hash_ids", []), list):
        raise ValueError("hash_ids is not a list")


def _check_hash_ids(ids: list[Any]) -> None:
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError("hash_ids is not a list of integers")


def _prefix_blocks(rows: list[Any], numbers: list[int], path: Path) -> PrefixBlocks:
    lists = [row.get("hash_ids", []) for row in rows]
    counts = np.fromiter((len(ids) for ids in lists), dtype=np.int64, count=len(lists))
    flat = np.array(list(chain.from_iterable(lists)))
    if flat.size and flat.dtype.kind != "i":
        for number, ids in zip(numbers, lists, strict=True):  # slow path: find the bad row
            try:
                _check_hash_ids(ids)
            except ValueError as exc:
                raise DopdError(f"{path}:{number}: {exc}") from None
        raise DopdError(f"{path}: hash_ids outside the 64-bit integer range")
    ids = flat.astype(np.int64) if flat.size else np.empty(0, dtype=np.int64)
    return PrefixBlocks(ids, np.concatenate(([0], np.cumsum(counts))), block_tokens=512)


def _load_mooncake(text: str, path: Path, zero_output: str, prefix: bool) -> Workload:
    lines = text.split("\n")
    numbers = [i + 1 for i, line in enumerate(lines) if line.strip()]
    try:
        rows = json.loads("[" + ",".join(lines[n - 1] for n in numbers) + "]")
        if len(rows) != len(numbers):
            raise json.JSONDecodeError("not one value per line", "", 0)
    except json.JSONDecodeError:
        for number in numbers:
            try:
                json.loads(lines[number - 1])
            except json.JSONDecodeError as exc:
                raise DopdError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
        raise DopdError(f"{path}: invalid JSON lines") from None
    for number, row in zip(numbers, rows, strict=True):
        try:
            _check_mooncake_row(row)
        except ValueError as exc:
            raise DopdError(f"{path}:{number}: {exc}") from None
    arrival = np.array([row["timestamp"] for row in rows], dtype=np.float64) / 1000.0
    bad = ~np.isfinite(arrival) | (arrival < 0)
    if bad.any():
        raise DopdError(f"{path}:{numbers[int(np.argmax(bad))]}: timestamp must be finite, >= 0")
    prompt = _ints([row["input_length"] for row in rows], numbers, path, "input_length")
    output = _ints([row["output_length"] for row in rows], numbers, path, "output_length")
    output = _lengths(prompt, output, numbers, path, zero_output)
    blocks = _prefix_blocks(rows, numbers, path) if prefix else None
    return Workload.from_arrays(path.stem, arrival, prompt, output, blocks)


def load_trace(
    path: str | Path,
    format: str = "auto",
    *,
    zero_output: str = "clamp",
    prefix: bool = True,
) -> Workload | LengthTable:
    """Load a trace: a :class:`Workload`, or a :class:`LengthTable` for lengths-only formats.

    ``path`` is a file or a dataset name of :mod:`dopd.data`. ``format`` is ``"auto"`` (detect
    from the content) or one of :data:`TRACE_FORMATS`.
    ``zero_output`` is ``"clamp"`` (0 -> 1) or ``"reject"``; ``prefix`` keeps Mooncake hash ids.
    Raises :class:`DopdError` for a missing or empty file, an unknown format or a bad row.
    """
    path = resolve_dataset(path)
    text = _read_text(path)
    fmt = _format_of(text, path) if format == "auto" else format.strip().lower()
    require(fmt in TRACE_FORMATS, f"unknown trace format {format!r} (known: auto, "
                                  f"{', '.join(TRACE_FORMATS)})")
    if fmt == "mooncake":
        return _load_mooncake(text, path, zero_output, prefix)
    return _load_csv(text, path, fmt, zero_output)


def load_workload(path: str | Path, format: str = "auto", **options: Any) -> Workload:
    """Like :func:`load_trace` but the trace must have arrival times."""
    trace = load_trace(path, format, **options)
    if not isinstance(trace, Workload):
        raise DopdError(f"{path}: lengths-only trace has no arrival times; use it as a length "
                        "sampler with an arrival process")
    return trace


def load_lengths(path: str | Path, format: str = "auto", **options: Any) -> LengthTable:
    """The (prompt, output) pairs of any trace, without arrival times."""
    trace = load_trace(path, format, prefix=False, **options)
    if isinstance(trace, LengthTable):
        return trace
    return LengthTable(trace.name, trace.prompt_tokens, trace.output_tokens)


def save_workload(workload: Workload, path: str | Path) -> None:
    """Write ``workload`` as a ``dopd`` CSV; loading it back gives identical arrays."""
    columns = zip(
        workload.arrival_s.tolist(),
        workload.prompt_tokens.tolist(),
        workload.output_tokens.tolist(),
        strict=True,
    )
    body = "".join(f"{a!r},{p},{o}\n" for a, p, o in columns)
    Path(path).write_text("arrival_s,prompt_tokens,output_tokens\n" + body)
