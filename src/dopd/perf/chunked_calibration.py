"""Fit the chunked-prefill calibration form (``dopd.perf.chunked``) to measured steps; file I/O.

Measured steps are :class:`StepMeasurement` rows: a step's running sums and its time. As CSV
(a header row; extra columns ignored)::

    prefill_new_tokens,prefill_attn_sum,prefill_count,decode_count,decode_ctx_sum,step_ms

The fit minimises the relative error ``sum(((x_k . beta) - y_k) / y_k)^2`` with every coefficient
``>= 0`` (``scipy.optimize.lsq_linear``, bounded variables), with hinges at the fixed knots
:data:`KNOTS` below the largest measured token count (a knot beyond the data is not fitted).

JSON form (written by :func:`chunked_to_dict`, read by :func:`chunked_from_dict`)::

    {"form": "chunked", "coefficients": {"intercept_ms": ..., "token_ms": ...,
     "hinges": [[knot, ms_per_token], ...], "attn_pair_ms": ..., "causal_pair_ms": ...,
     "kv_token_ms": ..., "seq_ms": ...}, ...}

Other keys (the fit's errors, where it was measured) are kept for people and ignored on load.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import cast

import numpy as np

from dopd.errors import DopdError, require
from dopd.perf.chunked import FORM, ChunkedCoefficients, causal_pairs

MEASUREMENT_COLUMNS = ("prefill_new_tokens", "prefill_attn_sum", "prefill_count", "decode_count",
                       "decode_ctx_sum", "step_ms")
KNOTS = (16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0)


@dataclass(frozen=True, slots=True)
class StepMeasurement:
    """One measured step: its running sums (see ``dopd.perf.base``) and its time in ms."""

    prefill_new_tokens: int
    prefill_attn_sum: int
    prefill_count: int
    decode_count: int
    decode_ctx_sum: int
    step_ms: float

    def __post_init__(self) -> None:
        require(min(self.prefill_new_tokens, self.prefill_attn_sum, self.prefill_count,
                    self.decode_count, self.decode_ctx_sum) >= 0, "step sums must be >= 0")
        require(self.prefill_new_tokens + self.decode_count >= 1, "a step needs >= 1 token")
        require((self.prefill_count == 0) == (self.prefill_new_tokens == 0),
                "prefill chunks and prefill tokens must both be 0 or both > 0")
        require(math.isfinite(self.step_ms) and self.step_ms > 0,
                f"step_ms must be > 0, got {self.step_ms}")

    @property
    def kind(self) -> str:
        """``"prefill"``, ``"decode"`` or ``"mixed"``."""
        if self.prefill_count and self.decode_count:
            return "mixed"
        return "prefill" if self.prefill_count else "decode"

    def sums(self) -> tuple[int, int, int, int, int]:
        return (self.prefill_new_tokens, self.prefill_attn_sum, self.prefill_count,
                self.decode_count, self.decode_ctx_sum)


@dataclass(frozen=True, slots=True)
class ChunkedFit:
    """Fitted coefficients and the absolute relative errors on the fitted samples."""

    coefficients: ChunkedCoefficients
    samples: int
    median_rel_error: float
    rms_rel_error: float
    max_rel_error: float


def _features(rows: Sequence[StepMeasurement], knots: Sequence[float]) -> np.ndarray:
    out = np.empty((len(rows), 6 + len(knots)))
    for i, r in enumerate(rows):
        tokens = r.prefill_new_tokens + r.decode_count
        out[i, :6] = (1.0, tokens, r.prefill_attn_sum,
                      causal_pairs(r.prefill_new_tokens, r.prefill_attn_sum, r.prefill_count),
                      r.decode_ctx_sum + r.decode_count, r.prefill_count + r.decode_count)
        out[i, 6:] = [max(tokens - k, 0.0) for k in knots]
    return out


def relative_errors(coeffs: ChunkedCoefficients, rows: Sequence[StepMeasurement]) -> np.ndarray:
    """Signed relative errors ``predicted / measured - 1`` of ``coeffs`` on ``rows``."""
    return np.array([coeffs.step_ms(*r.sums()) / r.step_ms - 1.0 for r in rows])


def fit_chunked(rows: Sequence[StepMeasurement], knots: Sequence[float] = KNOTS) -> ChunkedFit:
    """Fit the chunked form to ``rows`` (module docstring); ``DopdError`` if too few rows."""
    from scipy.optimize import lsq_linear  # slow to import; only fits need it

    require(len(rows) >= 6, f"need >= 6 measured steps to fit the chunked form, got {len(rows)}")
    y = np.array([r.step_ms for r in rows])
    top = max(r.prefill_new_tokens + r.decode_count for r in rows)
    used = [k for k in knots if k < top]
    x = _features(rows, used) / y[:, None]
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    beta = lsq_linear(x / scale, np.ones_like(y), bounds=(0.0, np.inf), method="bvls").x
    beta = np.maximum(beta / scale, 0.0)
    require(beta[0] + beta[1] > 0, "the measured steps do not determine the chunked form")
    coeffs = ChunkedCoefficients(
        intercept_ms=float(beta[0]), token_ms=float(beta[1]),
        hinges=tuple((float(k), float(e)) for k, e in zip(used, beta[6:], strict=True) if e > 0),
        attn_pair_ms=float(beta[2]), causal_pair_ms=float(beta[3]), kv_token_ms=float(beta[4]),
        seq_ms=float(beta[5]),
    )
    errors = relative_errors(coeffs, rows)
    absolute = np.abs(errors)
    return ChunkedFit(coeffs, len(rows), float(np.median(absolute)),
                      float(np.sqrt(np.mean(errors**2))), float(absolute.max()))


def is_measurement_csv(path: str | Path) -> bool:
    """True if the CSV at ``path`` has the :data:`MEASUREMENT_COLUMNS` header."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    return all(c in header for c in MEASUREMENT_COLUMNS)


def read_measurements(path: str | Path) -> list[StepMeasurement]:
    """Parse a CSV of measured steps; ``DopdError`` naming the line of a malformed row."""
    p = Path(path)
    require(p.is_file(), f"measurement file {str(p)!r} not found")
    rows = []
    with p.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in MEASUREMENT_COLUMNS if c not in (reader.fieldnames or ())]
        require(not missing, f"{p.name}: missing CSV columns {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                ints = [int(float(row[c])) for c in MEASUREMENT_COLUMNS[:-1]]
                rows.append(StepMeasurement(*ints, step_ms=float(row["step_ms"])))
            except (ValueError, TypeError, DopdError) as exc:
                raise DopdError(f"{p.name} line {line}: {exc}") from None
    return rows


def write_measurements(rows: Sequence[StepMeasurement], path: str | Path) -> None:
    """Write ``rows`` as CSV (with a ``kind`` column for people; it is ignored on reading)."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("kind", *MEASUREMENT_COLUMNS))
        for r in rows:
            writer.writerow((r.kind, *r.sums(), f"{r.step_ms:.6g}"))


def chunked_to_dict(coeffs: ChunkedCoefficients) -> dict[str, object]:
    """The JSON form of ``coeffs`` (add more keys for people as needed)."""
    raw = asdict(coeffs)
    raw["hinges"] = [list(h) for h in coeffs.hinges]
    return {"form": FORM, "coefficients": raw}


def is_chunked_dict(raw: object) -> bool:
    return isinstance(raw, dict) and raw.get("form") == FORM


def chunked_from_dict(raw: object, where: str = "calibration") -> ChunkedCoefficients:
    """Parse the JSON form; ``DopdError`` naming the bad or missing key."""
    require(is_chunked_dict(raw), f"{where}: expected a JSON object with \"form\": \"{FORM}\"")
    coeffs = cast(dict[str, object], raw).get("coefficients")
    require(isinstance(coeffs, dict), f"{where}: 'coefficients' must be an object")
    values: dict[str, object] = {}
    for f in fields(ChunkedCoefficients):
        value = cast(dict[str, object], coeffs).get(f.name)
        if f.name == "hinges":
            require(isinstance(value, list) and all(
                isinstance(h, list) and len(h) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in h)
                for h in value), f"{where}: coefficients.hinges must be a list of [knot, ms] pairs")
            values[f.name] = tuple((float(k), float(e)) for k, e in cast(list[list[float]], value))
            continue
        require(isinstance(value, (int, float)) and not isinstance(value, bool),
                f"{where}: coefficients.{f.name} must be a number")
        values[f.name] = float(cast(float, value))
    return ChunkedCoefficients(**values)  # type: ignore[arg-type]
