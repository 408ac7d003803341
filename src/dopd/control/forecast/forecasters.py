"""Smoothing forecasters: ``constant``, ``ewma``, ``holt`` and ``holt-winters``.

All are closed-form recursions, O(1) per window, because the controller calls them every tick.
``holt`` and ``holt-winters`` follow the additive recursions of Hyndman & Athanasopoulos
(statsmodels' ``Holt`` and ``ExponentialSmoothing`` use the same ones; the tests check this).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from dopd.control.forecast.base import FORECASTERS, Forecaster
from dopd.control.forecast.tuning import ALPHA_GRID, BETA_GRID, tune_ewma, tune_holt
from dopd.errors import require


def _smoothing(value: float, what: str) -> float:
    ok = isinstance(value, (int, float)) and 0.0 < value <= 1.0
    require(ok, f"{what} must be in (0, 1], got {value!r}")
    return float(value)


class _TuneSchedule:
    """Bounded history of values and the cadence of parameter re-tuning."""

    def __init__(self, every: int, history: int, min_values: int) -> None:
        require(
            isinstance(every, int) and every >= 1,
            f"tune_every must be an integer >= 1, got {every!r}",
        )
        require(
            isinstance(min_values, int) and min_values >= 2,
            f"min_tune must be an integer >= 2, got {min_values!r}",
        )
        require(
            isinstance(history, int) and history >= min_values,
            f"history must be an integer >= min_tune ({min_values}), got {history!r}",
        )
        self.every = every
        self.min_values = min_values
        self._values: deque[float] = deque(maxlen=history)
        self._since = every  # tune as soon as min_values are known

    def push(self, value: float) -> bool:
        """Record a value; True when the parameters are due for re-tuning."""
        self._values.append(value)
        self._since += 1
        if len(self._values) < self.min_values or self._since < self.every:
            return False
        self._since = 0
        return True

    def values(self) -> np.ndarray:
        return np.asarray(self._values, dtype=np.float64)


class ConstantForecaster(Forecaster):
    """The next window equals the last one (the naive forecast)."""

    name = "constant"

    def __init__(self, *, quantile: float = 0.9, residual_window: int = 100) -> None:
        super().__init__(quantile, residual_window)
        self._last = math.nan

    def _observe(self, value: float) -> None:
        self._last = value

    def _point(self) -> float:
        return self._last


class EwmaForecaster(Forecaster):
    """Exponentially weighted moving average: level <- alpha*x + (1-alpha)*level.

    The level starts at the first value. ``alpha=None`` (the default) tunes alpha by grid
    search on the one-step error over the last ``history`` windows, every ``tune_every``
    windows once ``min_tune`` windows are known (alpha 0.3 until then), and adopts the
    tuned run's level.
    """

    name = "ewma"

    def __init__(
        self,
        alpha: float | None = None,
        *,
        tune_every: int = 10,
        history: int = 120,
        min_tune: int = 10,
        quantile: float = 0.9,
        residual_window: int = 100,
    ) -> None:
        super().__init__(quantile, residual_window)
        self.auto = alpha is None
        self.alpha = 0.3 if alpha is None else _smoothing(alpha, "EWMA alpha")
        self._tuner = _TuneSchedule(tune_every, history, min_tune) if self.auto else None
        self._level = math.nan

    def _observe(self, value: float) -> None:
        if self._n == 0:
            self._level = value
        else:
            self._level += self.alpha * (value - self._level)
        if self._tuner is not None and self._tuner.push(value):
            best = tune_ewma(self._tuner.values())
            self.alpha, self._level = best.alpha, best.level

    def _point(self) -> float:
        return self._level


class HoltForecaster(Forecaster):
    """Holt's linear trend (double exponential smoothing), forecast = level + trend.

    Recursion: l' = a*x + (1-a)*(l+b); b' = beta*(l'-l) + (1-beta)*b. The state starts as
    l = x0, b = 0 after the first value and l = x1, b = x1 - x0 after the second, so a linear
    series is forecast exactly from the third window on. A parameter left None (the default
    for both) is tuned by grid search on the one-step error over the last ``history`` windows,
    every ``tune_every`` windows once ``min_tune`` are known (0.5 / 0.1 until then); the tuned
    run's state is adopted.
    """

    name = "holt"

    def __init__(
        self,
        alpha: float | None = None,
        beta: float | None = None,
        *,
        tune_every: int = 10,
        history: int = 120,
        min_tune: int = 10,
        quantile: float = 0.9,
        residual_window: int = 100,
    ) -> None:
        super().__init__(quantile, residual_window)
        self.alpha = 0.5 if alpha is None else _smoothing(alpha, "Holt alpha")
        self.beta = 0.1 if beta is None else _smoothing(beta, "Holt beta")
        self._alphas = ALPHA_GRID if alpha is None else np.array([self.alpha])
        self._betas = BETA_GRID if beta is None else np.array([self.beta])
        auto = alpha is None or beta is None
        self._tuner = _TuneSchedule(tune_every, history, max(min_tune, 3)) if auto else None
        self.level = math.nan
        self.trend = 0.0

    def _observe(self, value: float) -> None:
        if self._n == 0:
            self.level, self.trend = value, 0.0
        elif self._n == 1:
            self.level, self.trend = value, value - self.level
        else:
            level = self.alpha * value + (1.0 - self.alpha) * (self.level + self.trend)
            self.trend = self.beta * (level - self.level) + (1.0 - self.beta) * self.trend
            self.level = level
        if self._tuner is not None and self._tuner.push(value):
            best = tune_holt(self._tuner.values(), self._alphas, self._betas)
            self.alpha, self.beta, self.level, self.trend = (
                best.alpha, best.beta, best.level, best.trend
            )

    def _point(self) -> float:
        return self.level + self.trend


class HoltWintersForecaster(Forecaster):
    """Additive Holt-Winters with a season of ``period`` windows; forecast = l + b + s[next].

    Recursion: l' = a*(x - s) + (1-a)*(l+b); b' = beta*(l'-l) + (1-beta)*b;
    s' = gamma*(x - l - b) + (1-gamma)*s, where s is the seasonal term of the current phase.
    Initialised after two full seasons (level and trend from the two season means, seasonal
    terms from the first season's deviations from that line); until then it forecasts with an
    internal Holt model and says so in the forecast note.
    """

    name = "holt-winters"

    def __init__(
        self,
        period: int = 24,
        alpha: float = 0.3,
        beta: float = 0.05,
        gamma: float = 0.2,
        *,
        quantile: float = 0.9,
        residual_window: int = 100,
    ) -> None:
        super().__init__(quantile, residual_window)
        require(
            isinstance(period, int) and period >= 2,
            f"Holt-Winters period must be an integer >= 2 windows, got {period!r}",
        )
        self.period = period
        self.alpha = _smoothing(alpha, "Holt-Winters alpha")
        self.beta = _smoothing(beta, "Holt-Winters beta")
        self.gamma = _smoothing(gamma, "Holt-Winters gamma")
        self._warmup: list[float] | None = []
        self._holt = HoltForecaster(alpha, beta)
        self.level = math.nan
        self.trend = 0.0
        self.seasonal = np.zeros(period)

    def _step(self, t: int, value: float) -> None:
        phase = t % self.period
        s = self.seasonal[phase]
        level = self.alpha * (value - s) + (1.0 - self.alpha) * (self.level + self.trend)
        self.seasonal[phase] = self.gamma * (value - self.level - self.trend) + (1 - self.gamma) * s
        self.trend = self.beta * (level - self.level) + (1.0 - self.beta) * self.trend
        self.level = level

    def _observe(self, value: float) -> None:
        m = self.period
        if self._warmup is None:
            self._step(self._n, value)
            return
        self._holt.update(value)
        self._warmup.append(value)
        if len(self._warmup) < 2 * m:
            return
        x = np.asarray(self._warmup)
        mean1, mean2 = float(x[:m].mean()), float(x[m:].mean())
        self.trend = (mean2 - mean1) / m
        centre = (m - 1) / 2.0
        self.level = mean1 + self.trend * centre  # the line's value at the end of season 1
        self.seasonal = x[:m] - (mean1 + self.trend * (np.arange(m) - centre))
        for t in range(m, 2 * m):
            self._step(t, float(x[t]))
        self._warmup = None

    def _point(self) -> float:
        if self._warmup is not None:
            return self._holt.predict().mean
        return self.level + self.trend + float(self.seasonal[self._n % self.period])

    def _note(self) -> str:
        if self._warmup is None:
            return ""
        return f"warming up ({len(self._warmup)}/{2 * self.period} windows): holt forecast"


FORECASTERS.register("constant", ConstantForecaster)
FORECASTERS.register("ewma", EwmaForecaster)
FORECASTERS.register("holt", HoltForecaster)
FORECASTERS.register("holt-winters", HoltWintersForecaster)
