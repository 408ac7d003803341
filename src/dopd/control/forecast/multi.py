"""Joint forecast of the load signals the P/D ratio solver needs: rate and length moments."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from dopd.control.forecast.base import Forecast, make_forecaster
from dopd.control.monitor import WindowStats
from dopd.errors import DopdError, require

#: The signals a :class:`MultiForecaster` forecasts, in :class:`LoadForecast` field order.
SIGNALS: tuple[str, ...] = ("rate", "mean_in", "m2_in", "mean_out", "m2_out")


@dataclass(frozen=True, slots=True)
class LoadForecast:
    """Forecast load of the next window: what the P/D solver consumes.

    ``rate`` and ``rate_upper`` are requests/s (point forecast and upper prediction bound);
    ``mean_*`` and ``m2_*`` are the mean and raw second moment E[n^2] of the input (prompt) and
    output lengths in tokens. Invariants: all finite and >= 0, ``rate_upper >= rate``,
    ``m2 >= mean**2``. ``notes`` lists fallbacks or defaults used (empty in the normal case).
    """

    rate: float
    rate_upper: float
    mean_in: float
    m2_in: float
    mean_out: float
    m2_out: float
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (*SIGNALS, "rate_upper"):
            value = getattr(self, name)
            ok = math.isfinite(value) and value >= 0
            require(ok, f"forecast {name} must be >= 0, got {value}")
        require(self.rate_upper >= self.rate, "forecast rate_upper must be >= rate")
        tol = 1e-9
        require(self.m2_in >= self.mean_in**2 * (1 - tol), "forecast m2_in < mean_in**2")
        require(self.m2_out >= self.mean_out**2 * (1 - tol), "forecast m2_out < mean_out**2")

    @property
    def var_in(self) -> float:
        return max(self.m2_in - self.mean_in**2, 0.0)

    @property
    def var_out(self) -> float:
        return max(self.m2_out - self.mean_out**2, 0.0)

    @property
    def scv_in(self) -> float:
        """Squared coefficient of variation of the input length (0 when the mean is 0)."""
        return self.var_in / self.mean_in**2 if self.mean_in > 0 else 0.0

    @property
    def scv_out(self) -> float:
        return self.var_out / self.mean_out**2 if self.mean_out > 0 else 0.0


class MultiForecaster:
    """One forecaster per signal of :data:`SIGNALS`, updated together once per window.

    ``models`` is one spec for all signals or a mapping signal -> spec (missing signals use
    ``"ewma"``, the self-tuning EWMA: on the shared traces it is close to the best model
    everywhere, at a fraction of ARIMA's cost). A NaN value (a window with no arrivals or no
    finished requests has no length moments) leaves that signal's forecaster unchanged.
    ``defaults`` gives values for signals not yet observed (e.g. output lengths before the
    first request finishes); without one, :meth:`predict` raises DopdError until every signal
    has been seen (see :attr:`ready`).
    Forecasts are clamped to the invariants of :class:`LoadForecast` (non-negative values,
    m2 >= mean**2), which independent per-signal models do not guarantee.
    """

    def __init__(
        self,
        models: str | Mapping[str, str] = "ewma",
        *,
        quantile: float = 0.9,
        defaults: Mapping[str, float] | None = None,
    ) -> None:
        if isinstance(models, str):
            specs = dict.fromkeys(SIGNALS, models)
        else:
            unknown = sorted(set(models) - set(SIGNALS))
            require(not unknown, f"unknown signal(s) {unknown} (known: {', '.join(SIGNALS)})")
            specs = {s: models.get(s, "ewma") for s in SIGNALS}
        self.specs: dict[str, str] = specs
        self._forecasters = {s: make_forecaster(spec, quantile) for s, spec in specs.items()}
        self._defaults = dict(defaults or {})
        unknown = sorted(set(self._defaults) - set(SIGNALS))
        require(not unknown, f"unknown default signal(s) {unknown}")
        for name, value in self._defaults.items():
            ok = math.isfinite(value) and value >= 0
            require(ok, f"default {name} must be >= 0, got {value}")

    @property
    def ready(self) -> bool:
        """True when every signal has been observed or has a default."""
        return all(f.ready or s in self._defaults for s, f in self._forecasters.items())

    def update(self, stats: WindowStats) -> None:
        """Fold in a monitor snapshot (one call per control window)."""
        self.update_values(
            rate=stats.rate_rps, mean_in=stats.mean_in, m2_in=stats.m2_in,
            mean_out=stats.mean_out, m2_out=stats.m2_out,
        )

    def update_values(
        self, *, rate: float, mean_in: float, m2_in: float, mean_out: float, m2_out: float
    ) -> None:
        """Fold in one window's values; NaN means "not measured in this window"."""
        values = {"rate": rate, "mean_in": mean_in, "m2_in": m2_in, "mean_out": mean_out,
                  "m2_out": m2_out}
        for name, value in values.items():
            v = float(value)
            if math.isnan(v):
                continue
            require(math.isfinite(v) and v >= 0, f"{name} must be finite and >= 0, got {value!r}")
            self._forecasters[name].update(v)

    def forecast(self, signal: str) -> Forecast:
        """The raw (unclamped) forecast of one signal."""
        require(signal in self._forecasters, f"unknown signal {signal!r}")
        return self._forecasters[signal].predict()

    def predict(self) -> LoadForecast:
        """The next window's load; raises DopdError when a signal has no data and no default."""
        point: dict[str, float] = {}
        notes: list[str] = []
        rate_upper = math.nan
        for name, f in self._forecasters.items():
            if f.ready:
                fc = f.predict()
                point[name] = max(fc.mean, 0.0)
                if fc.note:
                    notes.append(f"{name}: {fc.note}")
                if name == "rate":
                    rate_upper = max(fc.upper, point[name])
            elif name in self._defaults:
                point[name] = self._defaults[name]
                notes.append(f"{name}: default {self._defaults[name]:g} (not observed yet)")
            else:
                raise DopdError(f"no {name} observed yet and no default given, cannot forecast")
        if math.isnan(rate_upper):
            rate_upper = point["rate"]
        return LoadForecast(
            rate=point["rate"],
            rate_upper=rate_upper,
            mean_in=point["mean_in"],
            m2_in=max(point["m2_in"], point["mean_in"] ** 2),
            mean_out=point["mean_out"],
            m2_out=max(point["m2_out"], point["mean_out"] ** 2),
            notes=tuple(notes),
        )
