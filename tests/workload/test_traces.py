"""Trace loaders: the public traces shipped in dopd.data, format detection and every error path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dopd.errors import DopdError
from dopd.workload import (
    LengthTable,
    Workload,
    detect_format,
    load_lengths,
    load_trace,
    load_workload,
    save_workload,
)

AZURE_CONV = "azure-conv"
AZURE_CODE = "azure-code"
MOONCAKE = "mooncake"
SHAREGPT = "sharegpt"


def write(tmp_path: Path, text: str, name: str = "trace.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


@pytest.mark.parametrize(
    ("path", "rows", "span_min", "prompt_mean", "output_mean"),
    [
        (AZURE_CONV, 19_366, 58, 1155, 211),
        (AZURE_CODE, 8_819, 57, 2048, 28),
        (MOONCAKE, 12_031, 59, 12035, 343),
    ],
)
def test_public_traces_match_readme(
    path: str, rows: int, span_min: float, prompt_mean: float, output_mean: float
) -> None:
    w = load_workload(path)
    assert len(w) == rows
    assert w.arrival_s[0] == 0.0 and np.all(np.diff(w.arrival_s) >= 0)
    assert w.duration_s / 60 == pytest.approx(span_min, abs=1)
    m = w.length_moments()
    assert m.prompt_mean == pytest.approx(prompt_mean, abs=1)
    assert m.output_mean == pytest.approx(output_mean, abs=1)


def test_azure_offsets_are_exact() -> None:
    w = load_workload(AZURE_CODE)
    # 18:17:03.9799600 -> 18:17:04.0319600 -> 18:17:04.0781490
    np.testing.assert_allclose(w.arrival_s[:3], [0.0, 0.052, 0.098189], atol=1e-9)
    assert w.prompt_tokens[:2].tolist() == [4808, 3180]


def test_mooncake_prefix_blocks() -> None:
    w = load_workload(MOONCAKE)
    assert w.prefix is not None and len(w.prefix) == len(w)
    assert w.prefix.blocks_of(1)[:2].tolist() == [0, 14]
    assert w.prefix.reuse_fraction() == pytest.approx(0.37, abs=0.01)  # README: about 37%
    # Every request's blocks cover its prompt: ceil(input / 512) blocks.
    counts = np.diff(w.prefix.offsets)
    np.testing.assert_array_equal(counts, -(-w.prompt_tokens // 512))
    assert load_workload(MOONCAKE, prefix=False).prefix is None


def test_sharegpt_is_a_length_table() -> None:
    table = load_trace(SHAREGPT)
    assert isinstance(table, LengthTable) and len(table) == 30_731
    assert table.length_moments().prompt_mean == pytest.approx(2340, abs=1)
    with pytest.raises(DopdError, match="no arrival times"):
        load_workload(SHAREGPT)
    assert len(load_lengths(AZURE_CONV)) == 19_366


def test_detect_format() -> None:
    assert detect_format(AZURE_CONV) == "azure"
    assert detect_format(MOONCAKE) == "mooncake"
    assert detect_format(SHAREGPT) == "sharegpt"


def test_detection_uses_content_not_extension(tmp_path: Path) -> None:
    path = write(tmp_path, '{"timestamp": 5, "input_length": 3, "output_length": 2}\n', "x.csv")
    w = load_workload(path)
    assert w.prompt_tokens.tolist() == [3] and w.prefix is not None and len(w.prefix.ids) == 0


def test_azure_crlf_bom_blank_lines_and_sorting(tmp_path: Path) -> None:
    text = (
        "\ufeffTIMESTAMP,ContextTokens,GeneratedTokens\r\n"
        "2023-11-16 18:00:01.5000000,10,0\r\n"
        "\r\n"
        "2023-11-16 18:00:00.2500000,20,5\r\n"
        "2023-11-16 18:00:03.0000000,30,7\r\n"
    )
    w = load_workload(write(tmp_path, text))
    np.testing.assert_allclose(w.arrival_s, [0.0, 1.25, 2.75])
    assert w.prompt_tokens.tolist() == [20, 10, 30]
    assert w.output_tokens.tolist() == [5, 1, 7]  # 0 clamped to 1
    with pytest.raises(DopdError, match=r":2: output length is 0"):
        load_workload(write(tmp_path, text), zero_output="reject")


HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEADER + "2023-11-16 18:00:00.0,5,5\n2023-11-16 18:00:01.0,5\n", r":3: expected 3 fields"),
        (HEADER + "2023-11-16 18:00:00.0,5,5\nyesterday,5,5\n", r":3: TIMESTAMP"),
        (HEADER + "2023-11-16 18:00:00.0,x,5\n", r":2: ContextTokens is not a number"),
        (HEADER + "2023-11-16 18:00:00.0,2.5,5\n", r":2: ContextTokens is not a whole"),
        (HEADER + "2023-11-16 18:00:00.0,0,5\n", r":2: prompt length 0 must be >= 1"),
        (HEADER + "2023-11-16 18:00:00.0,5,-3\n", r":2: output length -3 must be >= 0"),
        (HEADER, "no rows"),
        ("a,b,c\n1,2,3\n", "unknown trace format"),
        ("   \n\n", "empty"),
        ("", "empty"),
        ('{"timestamp": 0, "input_length": 5}\n', "unknown trace format"),
        ('{"timestamp": 0, "input_length": 5, "output_length": 1}\n{"timestamp": 1,\n',
         r":2: invalid JSON"),
        ('{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
         '{"timestamp": 1, "input_length": "5", "output_length": 1}\n',
         r":2: input_length missing or not a number"),
        ('{"timestamp": 0, "input_length": 5, "output_length": 1}\n[1, 2]\n',
         r":2: not a JSON object"),
        ('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1, "a"]}\n',
         r":1: hash_ids"),
        ('{"timestamp": -1, "input_length": 5, "output_length": 1}\n', r":1: timestamp"),
        ('{"timestamp": 0, "input_length": 5, "output_length": 1, '
         '"hash_ids": [1, 18446744073709551616]}\n', "64-bit"),
    ],
)
def test_malformed_traces(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DopdError, match=message):
        load_trace(write(tmp_path, text))


def test_missing_file_and_bad_format_name(tmp_path: Path) -> None:
    with pytest.raises(DopdError, match="not found"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(DopdError, match="not a file"):
        load_trace(tmp_path)
    path = write(tmp_path, HEADER + "2023-11-16 18:00:00.0,5,5\n")
    with pytest.raises(DopdError, match="unknown trace format 'parquet'"):
        load_trace(path, format="parquet")
    with pytest.raises(DopdError, match="missing column 'num_prefill_tokens'"):
        load_trace(path, format="sharegpt")


def test_save_and_reload_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    arrival = np.concatenate(([0.0], np.sort(rng.random(50) * 100)))
    w = Workload("rt", arrival, rng.integers(1, 5000, 51), rng.integers(1, 900, 51))
    path = tmp_path / "w.csv"
    save_workload(w, path)
    back = load_workload(path)
    assert detect_format(path) == "dopd"
    np.testing.assert_array_equal(back.arrival_s, w.arrival_s)
    np.testing.assert_array_equal(back.prompt_tokens, w.prompt_tokens)
    np.testing.assert_array_equal(back.output_tokens, w.output_tokens)
