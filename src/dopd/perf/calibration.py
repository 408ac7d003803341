"""Calibration: fit DistServe-form coefficients to measured steps, and load/save them.

Measured steps come as a CSV file with a header row and these columns (extra columns ignored)::

    kind           "prefill" or "decode"
    batch_size     prefill: number of prompts (chunks); decode: number of sequences B
    sum_tokens     prefill: sum of new tokens sum(n_i)          (decode: ignored, may be empty)
    sum_sq_tokens  prefill: sum(n_i * (c_i + n_i)), = sum(n_i^2) without cached tokens
                   (decode: ignored, may be empty)
    sum_ctx        decode: sum of contexts sum(ctx_j) before the step (prefill: ignored)
    step_ms        measured step time in milliseconds (> 0)

Each phase is fitted by least squares on *relative* error, i.e. minimising
``sum(((x_k . beta) - y_k) / y_k)^2`` (rows scaled by ``1 / y_k``), with coefficients constrained to
be >= 0 (``scipy.optimize.lsq_linear``) so the fitted model never gets faster with more work. The
decode phase gets two coefficient sets split at ``split_batch`` when each side has at least
``MIN_ROWS_PER_SET`` rows, else one set.

A calibration source (:func:`load_calibration`) is a built-in name (``distserve:opt-13b:tp1``, see
``dopd.perf.anchors``), a ``.csv`` file to fit, or a ``.json`` file of coefficients as written by
:func:`save_calibration`: ``{"prefill": [a, b, c], "decode_small_b": [a, b, c],
"decode_large_b": [a, b, c] | null, "decode_split_batch": 95}`` (``"decode"`` is accepted for a
single decode set), all in ms.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from dopd.errors import DopdError, require
from dopd.perf.anchors import DECODE_SPLIT_BATCH, builtin_calibration_names, get_anchor_fit
from dopd.perf.chunked import ChunkedCoefficients
from dopd.perf.chunked_calibration import (
    chunked_from_dict,
    fit_chunked,
    is_chunked_dict,
    is_measurement_csv,
    read_measurements,
)
from dopd.perf.fitted import Coeffs, DistServeCoefficients

CSV_COLUMNS = ("kind", "batch_size", "sum_tokens", "sum_sq_tokens", "sum_ctx", "step_ms")
MIN_ROWS_PER_SET = 3


@dataclass(frozen=True, slots=True)
class StepSample:
    """One measured step (see the CSV columns in the module docstring)."""

    kind: str
    batch_size: int
    sum_tokens: int
    sum_sq_tokens: int
    sum_ctx: int
    step_ms: float

    def __post_init__(self) -> None:
        require(self.kind in ("prefill", "decode"),
                f"sample kind must be 'prefill' or 'decode', got {self.kind!r}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        require(min(self.sum_tokens, self.sum_sq_tokens, self.sum_ctx) >= 0,
                "token sums must be >= 0")
        require(math.isfinite(self.step_ms) and self.step_ms > 0,
                f"step_ms must be > 0, got {self.step_ms}")


@dataclass(frozen=True, slots=True)
class CalibrationFit:
    """Fitted coefficients and the fit's worst and RMS relative error per phase."""

    coefficients: DistServeCoefficients
    prefill_samples: int
    decode_samples: int
    prefill_max_rel_error: float
    decode_max_rel_error: float
    prefill_rms_rel_error: float
    decode_rms_rel_error: float


def read_samples(path: str | Path) -> list[StepSample]:
    """Parse a CSV of measured steps; ``DopdError`` naming the line of a malformed row."""
    p = Path(path)
    require(p.is_file(), f"calibration file {str(p)!r} not found")
    samples = []
    with p.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or ())]
        require(not missing, f"{p.name}: missing CSV columns {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                def num(col: str, row: dict[str, str] = row) -> int:
                    text = (row[col] or "").strip()
                    return int(float(text)) if text else 0

                samples.append(StepSample(
                    kind=(row["kind"] or "").strip().lower(), batch_size=num("batch_size"),
                    sum_tokens=num("sum_tokens"), sum_sq_tokens=num("sum_sq_tokens"),
                    sum_ctx=num("sum_ctx"), step_ms=float(row["step_ms"]),
                ))
            except (ValueError, TypeError) as exc:
                raise DopdError(f"{p.name} line {line}: {exc}") from None
    return samples


def _relative_lstsq(x: np.ndarray, y: np.ndarray, what: str) -> tuple[Coeffs, float, float]:
    require(x.shape[0] >= 3, f"{what}: need >= 3 samples to fit 3 coefficients, got {x.shape[0]}")
    a = x / y[:, None]
    require(np.linalg.matrix_rank(a) == 3,
            f"{what}: samples do not determine the fit (vary the batch sizes and lengths)")
    scale = np.abs(a).max(axis=0)
    from scipy.optimize import lsq_linear  # scipy.optimize is slow to import; only fits need it

    result = lsq_linear(a / scale, np.ones_like(y), bounds=(0.0, np.inf), method="bvls")
    beta = result.x / scale
    rel = (x @ beta - y) / y
    coeffs = (float(beta[0]), float(beta[1]), float(beta[2]))
    return coeffs, float(np.abs(rel).max()), float(np.sqrt(np.mean(rel**2)))


def fit_calibration(samples: Sequence[StepSample],
                    split_batch: int | None = DECODE_SPLIT_BATCH) -> CalibrationFit:
    """Fit DistServe-form coefficients to ``samples`` (see the module docstring).

    ``split_batch`` None fits a single decode set. Raises ``DopdError`` if a phase has too few or
    degenerate samples.
    """
    pre = [s for s in samples if s.kind == "prefill"]
    dec = [s for s in samples if s.kind == "decode"]
    x = np.array([[1.0, s.sum_tokens, s.sum_sq_tokens] for s in pre]).reshape(-1, 3)
    y = np.array([s.step_ms for s in pre])
    prefill, p_max, p_rms = _relative_lstsq(x, y, "prefill")

    def decode_fit(rows: list[StepSample], what: str) -> tuple[Coeffs, np.ndarray]:
        xd = np.array([[1.0, s.sum_ctx + s.batch_size, s.batch_size] for s in rows]).reshape(-1, 3)
        yd = np.array([s.step_ms for s in rows])
        coeffs, _, _ = _relative_lstsq(xd, yd, what)
        return coeffs, (xd @ np.array(coeffs) - yd) / yd

    small = [s for s in dec if split_batch is None or s.batch_size < split_batch]
    large = [s for s in dec if split_batch is not None and s.batch_size >= split_batch]
    if split_batch is not None and min(len(small), len(large)) >= MIN_ROWS_PER_SET:
        small_c, rel_s = decode_fit(small, "decode (small batches)")
        large_c, rel_l = decode_fit(large, "decode (large batches)")
        coeffs = DistServeCoefficients(prefill, small_c, large_c, split_batch)
        rel = np.concatenate([rel_s, rel_l])
    else:
        single, rel = decode_fit(dec, "decode")
        coeffs = DistServeCoefficients(prefill, single)
    return CalibrationFit(
        coefficients=coeffs, prefill_samples=len(pre), decode_samples=len(dec),
        prefill_max_rel_error=p_max, decode_max_rel_error=float(np.abs(rel).max()),
        prefill_rms_rel_error=p_rms, decode_rms_rel_error=float(np.sqrt(np.mean(rel**2))),
    )


def coefficients_to_dict(coeffs: DistServeCoefficients) -> dict[str, object]:
    """The JSON form of ``coeffs`` (see the module docstring)."""
    return {
        "prefill": list(coeffs.prefill),
        "decode_small_b": list(coeffs.decode_small_b),
        "decode_large_b": None if coeffs.decode_large_b is None else list(coeffs.decode_large_b),
        "decode_split_batch": coeffs.decode_split_batch,
    }


def save_calibration(coeffs: DistServeCoefficients, path: str | Path) -> None:
    """Write ``coeffs`` as JSON to ``path``."""
    Path(path).write_text(json.dumps(coefficients_to_dict(coeffs), indent=1) + "\n",
                          encoding="utf-8")


def _triple(raw: dict[str, object], key: str, where: str) -> Coeffs:
    values = raw.get(key)
    require(isinstance(values, list) and len(values) == 3
            and all(isinstance(v, (int, float)) for v in values),
            f"{where}: {key!r} must be a list of 3 numbers")
    a, b, c = (float(v) for v in values)  # type: ignore[union-attr]
    return a, b, c


def coefficients_from_dict(raw: object, where: str = "calibration") -> DistServeCoefficients:
    """Parse the JSON form of coefficients; ``DopdError`` naming the bad key."""
    require(isinstance(raw, dict), f"{where}: expected a JSON object")
    raw = cast(dict[str, object], raw)
    prefill = _triple(raw, "prefill", where)
    if "decode" in raw:
        return DistServeCoefficients(prefill, _triple(raw, "decode", where))
    small = _triple(raw, "decode_small_b", where)
    large = None if raw.get("decode_large_b") is None else _triple(raw, "decode_large_b", where)
    split = raw.get("decode_split_batch", DECODE_SPLIT_BATCH)
    require(isinstance(split, int), f"{where}: 'decode_split_batch' must be an integer")
    return DistServeCoefficients(prefill, small, large, cast(int, split))


def load_calibration(source: str | Path) -> DistServeCoefficients | ChunkedCoefficients:
    """Coefficients from a built-in name, a ``.csv`` of measured steps or a ``.json`` file.

    A CSV with the running-sum columns of ``dopd.perf.chunked_calibration`` (as ``dopd profile``
    writes) and a JSON with ``"form": "chunked"`` give the chunked-prefill form; the others the
    DistServe form.
    """
    text = str(source)
    path = Path(text)
    if path.suffix.lower() == ".csv":
        require(path.is_file(), f"calibration file {text!r} not found")
        if is_measurement_csv(path):
            return fit_chunked(read_measurements(path)).coefficients
        return fit_calibration(read_samples(path)).coefficients
    if path.suffix.lower() == ".json":
        require(path.is_file(), f"calibration file {text!r} not found")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DopdError(f"{path.name}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        if is_chunked_dict(raw):
            return chunked_from_dict(raw, path.name)
        return coefficients_from_dict(raw, path.name)
    try:
        fit = get_anchor_fit(text)
    except DopdError:
        known = ", ".join(builtin_calibration_names())
        raise DopdError(f"calibration {text!r} is neither a .csv/.json file nor a built-in name "
                        f"(known: {known})") from None
    return DistServeCoefficients(fit.prefill, fit.decode_small_b, fit.decode_large_b,
                                 DECODE_SPLIT_BATCH)
