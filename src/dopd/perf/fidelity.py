"""How closely the roofline model reproduces the shipped DistServe fits (the fidelity check).

For every ``distserve`` fit (OPT-13B and OPT-66B on A100-SXM-80GB, several TP degrees), the
roofline model with a preset (``legacy2023`` by default) is evaluated over the grid the fit covers,
and compared to the fit's prediction:

- prefill: ``b`` prompts of ``n`` tokens each, ``n`` in {128, 256, 512, 1024, 2048}, ``b`` in
  {1, 2, 4, 8};
- decode: ``B`` sequences at context ``ctx``, ``B`` in {1, 2, ..., 256} (powers of two),
  ``ctx`` in {256, 512, 1024}; the fit's small-batch set for ``B < 95``, else the large one.

The anchors' profiling grid goes beyond the KV memory of some configurations (256 x 1024 tokens of
OPT-66B do not fit on two GPUs), so the hot path, which does not check capacity, is used.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from dopd.perf.anchors import ANCHOR_GPU, AnchorFit, anchor_fits
from dopd.perf.latency import RooflineLatencyModel
from dopd.perf.presets import EnginePreset

PREFILL_LENGTHS = (128, 256, 512, 1024, 2048)
PREFILL_BATCHES = (1, 2, 4, 8)
DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DECODE_CONTEXTS = (256, 512, 1024)


@dataclass(frozen=True, slots=True)
class FidelityRow:
    """Absolute relative errors |model - fit| / fit of one fit over its grid."""

    fit: str
    points: int
    prefill_median: float
    prefill_worst: float
    decode_median: float
    decode_worst: float
    median: float
    worst: float


@dataclass(frozen=True, slots=True)
class FidelityReport:
    """Per-fit rows and the errors over all points of all fits."""

    preset: str
    rows: tuple[FidelityRow, ...]
    median: float
    worst: float


def fit_errors(fit: AnchorFit, preset: str | EnginePreset = "legacy2023"
               ) -> tuple[list[float], list[float]]:
    """Relative errors (signed, model / fit - 1) over the prefill and the decode grid of ``fit``."""
    model = RooflineLatencyModel(fit.model, ANCHOR_GPU, fit.tp, preset, check_capacity=False)
    prefill = []
    for n in PREFILL_LENGTHS:
        for b in PREFILL_BATCHES:
            predicted = model.step_time(n * b, n * n * b, b, 0, 0) * 1e3
            prefill.append(predicted / fit.prefill_ms((n,) * b) - 1.0)
    decode = []
    for b in DECODE_BATCHES:
        for ctx in DECODE_CONTEXTS:
            predicted = model.step_time(0, 0, 0, b, b * ctx) * 1e3
            decode.append(predicted / fit.decode_ms(b, ctx) - 1.0)
    return prefill, decode


def fidelity_report(preset: str | EnginePreset = "legacy2023",
                    engine: str = "distserve") -> FidelityReport:
    """Median and worst absolute relative error per ``engine`` fit and overall (see module doc)."""
    rows = []
    everything: list[float] = []
    for fit in anchor_fits(engine):
        prefill, decode = fit_errors(fit, preset)
        p = [abs(e) for e in prefill]
        d = [abs(e) for e in decode]
        both = p + d
        everything.extend(both)
        rows.append(FidelityRow(
            fit=fit.name, points=len(both),
            prefill_median=statistics.median(p), prefill_worst=max(p),
            decode_median=statistics.median(d), decode_worst=max(d),
            median=statistics.median(both), worst=max(both),
        ))
    name = preset if isinstance(preset, str) else preset.name
    return FidelityReport(preset=name, rows=tuple(rows), median=statistics.median(everything),
                          worst=max(everything))
