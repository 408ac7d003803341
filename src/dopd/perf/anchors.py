"""The shipped calibration data: DistServe's published per-step latency fits on A100-SXM-80GB.

``perf/data/distserve_a100_latency_fits.json`` holds, per (engine, model, TP), the coefficients of
``prefill_ms = a + b*sum(n) + c*sum(n^2)`` and ``decode_ms = a + b*sum(ctx + 1) + c*B`` (one set for
``B < 95``, one for ``B >= 95``), valid for prompts of about 128-2048 tokens and decode batches of
1-256 at contexts 256-1024. Each fit is a built-in calibration named ``ENGINE:MODEL:tpN`` (e.g.
``distserve:opt-13b:tp1``, ``vllm:opt-13b:tp1``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from dopd.errors import DopdError

ANCHOR_GPU = "a100-80gb"
DECODE_SPLIT_BATCH = 95
_DATA_FILE = "distserve_a100_latency_fits.json"

Coeffs = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class AnchorFit:
    """One published fit: coefficients in milliseconds (see the module docstring)."""

    engine: str
    model: str
    tp: int
    prefill: Coeffs
    decode_small_b: Coeffs
    decode_large_b: Coeffs

    @property
    def name(self) -> str:
        """Built-in calibration name, ``engine:model:tpN`` in lower case."""
        return f"{self.engine}:{self.model}:tp{self.tp}".lower()

    def prefill_ms(self, lengths: tuple[int, ...]) -> float:
        a, b, c = self.prefill
        return a + b * sum(lengths) + c * sum(n * n for n in lengths)

    def decode_ms(self, batch: int, ctx: int) -> float:
        """Step time of ``batch`` sequences each at context ``ctx``."""
        a, b, c = self.decode_small_b if batch < DECODE_SPLIT_BATCH else self.decode_large_b
        return a + b * batch * (ctx + 1) + c * batch


def _coeffs(values: object, where: str) -> Coeffs:
    if not (isinstance(values, list) and len(values) == 3):
        raise DopdError(f"anchor file: {where} must be a list of 3 numbers")
    a, b, c = (float(v) for v in values)
    return a, b, c


@cache
def _load() -> tuple[dict[str, object], tuple[AnchorFit, ...]]:
    data = resources.files("dopd.perf").joinpath("data").joinpath(_DATA_FILE)
    text = data.read_text(encoding="utf-8")
    raw = json.loads(text)
    fits = []
    for item in raw["fits"]:
        where = f"{item['engine']} {item['model']} tp{item['tp']}"
        fits.append(AnchorFit(
            engine=str(item["engine"]).lower(), model=str(item["model"]).lower(),
            tp=int(item["tp"]), prefill=_coeffs(item["prefill"], where),
            decode_small_b=_coeffs(item["decode_small_b"], where),
            decode_large_b=_coeffs(item["decode_large_b"], where),
        ))
    return raw, tuple(fits)


def anchor_fits(engine: str | None = None) -> tuple[AnchorFit, ...]:
    """All shipped fits, or those of one ``engine`` (``"distserve"`` or ``"vllm"``)."""
    fits = _load()[1]
    if engine is None:
        return fits
    return tuple(f for f in fits if f.engine == engine.lower())


def builtin_calibration_names() -> list[str]:
    """Names accepted as built-in calibrations, e.g. ``distserve:opt-13b:tp1``."""
    return sorted(f.name for f in anchor_fits())


def get_anchor_fit(name: str) -> AnchorFit:
    """The fit called ``name`` (case-insensitive); ``DopdError`` listing the known ones if none."""
    key = name.strip().lower()
    for fit in anchor_fits():
        if fit.name == key:
            return fit
    known = ", ".join(builtin_calibration_names())
    raise DopdError(f"unknown built-in calibration {name!r} (known: {known})")


def anchor_kv_capacities() -> dict[tuple[str, int], int]:
    """Published KV capacities in tokens, keyed by (model name in lower case, tp)."""
    out: dict[tuple[str, int], int] = {}
    for key, tokens in dict(_load()[0]["kv_capacity_tokens"]).items():  # type: ignore[call-overload]
        model, tp = str(key).lower().split()
        out[(model, int(tp.removeprefix("tp")))] = int(tokens)
    return out
