"""Walk-forward backtest of forecasters on a trace's window series.

Each model predicts window t+1 from windows <= t only (it is updated after it predicts), which
is exactly how the controller uses it. All models are scored on the same windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dopd.control.forecast.base import make_forecaster
from dopd.control.monitor import WindowSeries, window_series
from dopd.errors import require

#: Signals scored by default: the rate and the mean input and output lengths.
DEFAULT_SIGNALS: tuple[str, ...] = ("rate", "mean_in", "mean_out")
METRICS: tuple[str, ...] = ("mae", "mape", "rmse", "coverage")


@dataclass(frozen=True, slots=True)
class Score:
    """Accuracy of one model on one signal over ``n`` scored windows.

    ``mape`` is the mean of |error| / |actual| over the windows whose actual is not 0 (NaN if
    none); ``coverage`` is the share of windows with actual <= upper bound (nominal: the
    quantile); ``fallback_share`` the share of forecasts that carried a note (warm-up, fallback).
    """

    signal: str
    model: str
    n: int
    mae: float
    mape: float
    rmse: float
    coverage: float
    fallback_share: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in (("n", self.n), ("mae", self.mae), ("mape", self.mape),
                             ("rmse", self.rmse), ("coverage", self.coverage),
                             ("fallback_share", self.fallback_share))}


@dataclass(frozen=True, slots=True)
class BacktestResult:
    """Scores of every (signal, model) pair, in the order given."""

    window_s: float
    quantile: float
    n_windows: int
    models: tuple[str, ...]
    signals: tuple[str, ...]
    scores: tuple[Score, ...]

    def score(self, signal: str, model: str) -> Score:
        for s in self.scores:
            if s.signal == signal and s.model == model:
                return s
        raise KeyError((signal, model))

    def best(self, signal: str, metric: str = "mae") -> str:
        """The model with the lowest ``metric`` on ``signal`` (coverage: closest to nominal)."""
        require(metric in METRICS, f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
        rows = [s for s in self.scores if s.signal == signal]
        require(bool(rows), f"signal {signal!r} was not backtested")

        def key(s: Score) -> float:
            v = getattr(s, metric)
            v = abs(v - self.quantile) if metric == "coverage" else v
            return math.inf if math.isnan(v) else v

        return min(rows, key=key).model

    def as_dict(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "quantile": self.quantile,
            "windows": self.n_windows,
            "models": list(self.models),
            "scores": {
                sig: {s.model: s.as_dict() for s in self.scores if s.signal == sig}
                for sig in self.signals
            },
            "best": {sig: {m: self.best(sig, m) for m in METRICS} for sig in self.signals},
        }


def _walk(spec: str, y: npt.NDArray[np.float64], quantile: float) -> tuple[np.ndarray, ...]:
    """One-step-ahead forecasts of ``y``: (mean, upper, noted) per window, NaN when not ready."""
    f = make_forecaster(spec, quantile)
    mean = np.full(len(y), np.nan)
    upper = np.full(len(y), np.nan)
    noted = np.zeros(len(y), dtype=bool)
    for t, value in enumerate(y.tolist()):
        if f.ready:
            fc = f.predict()
            mean[t], upper[t], noted[t] = fc.mean, fc.upper, bool(fc.note)
        if math.isfinite(value):
            f.update(value)
    return mean, upper, noted


def _score(signal: str, model: str, actual: np.ndarray, mean: np.ndarray, upper: np.ndarray,
           noted: np.ndarray) -> Score:
    err = mean - actual
    nonzero = actual != 0
    n = len(actual)
    return Score(
        signal=signal,
        model=model,
        n=n,
        mae=float(np.mean(np.abs(err))),
        mape=float(np.mean(np.abs(err[nonzero]) / np.abs(actual[nonzero])))
        if nonzero.any() else math.nan,
        rmse=float(np.sqrt(np.mean(err * err))),
        coverage=float(np.mean(actual <= upper)),
        fallback_share=float(np.mean(noted)),
    )


def backtest(
    series: WindowSeries,
    models: Sequence[str],
    *,
    signals: Sequence[str] = DEFAULT_SIGNALS,
    quantile: float = 0.9,
    warmup: int = 1,
) -> BacktestResult:
    """Score ``models`` (forecaster specs) on ``signals`` of ``series``, walk-forward.

    Windows before ``warmup`` and windows where any model has no forecast or the actual is NaN
    (no arrivals) are not scored, so every model is scored on the same windows. Raises
    DopdError for unknown models or signals, or when fewer than 3 windows can be scored.
    """
    require(len(models) >= 1, "no models to backtest")
    require(len(set(models)) == len(models), "duplicate model in the list")
    require(warmup >= 0, f"warmup must be >= 0, got {warmup}")
    for spec in models:
        make_forecaster(spec, quantile)  # fail fast on a bad spec
    scores: list[Score] = []
    for signal in signals:
        y = np.asarray(series.signal(signal), dtype=np.float64)
        runs = {spec: _walk(spec, y, quantile) for spec in models}
        mask = np.isfinite(y) & (np.arange(len(y)) >= warmup)
        for mean, upper, _ in runs.values():
            mask &= np.isfinite(mean) & np.isfinite(upper)
        require(
            int(mask.sum()) >= 3,
            f"only {int(mask.sum())} windows of {signal} can be scored; need >= 3 "
            f"(use a shorter window or a longer trace)",
        )
        for spec, (mean, upper, noted) in runs.items():
            scores.append(_score(signal, spec, y[mask], mean[mask], upper[mask], noted[mask]))
    return BacktestResult(
        window_s=series.window_s,
        quantile=quantile,
        n_windows=len(series),
        models=tuple(models),
        signals=tuple(signals),
        scores=tuple(scores),
    )


def backtest_trace(
    path: str, window_s: float, models: Sequence[str], *, quantile: float = 0.9
) -> BacktestResult:
    """Load a trace with ``dopd.workload.load_workload`` and backtest ``models`` on it."""
    from dopd.workload import load_workload

    require(math.isfinite(window_s) and window_s > 0, f"window must be > 0 s, got {window_s}")
    return backtest(window_series(load_workload(path), window_s), models, quantile=quantile)
