"""Forecasters of the next control window's load (rate, input/output length moments).

Models (by registry name): ``constant``, ``ewma(alpha)``, ``holt(alpha, beta)``,
``holt-winters(period, alpha, beta, gamma)``, ``arima(p, d, q)``. Build one with
:func:`make_forecaster`; forecast all load signals together with :class:`MultiForecaster`;
score models on a trace with :func:`backtest`.
"""

from dopd.control.forecast import arima as _arima  # noqa: F401  (registers "arima")
from dopd.control.forecast import forecasters as _forecasters  # noqa: F401  (registers them)
from dopd.control.forecast.backtest import BacktestResult, Score, backtest, backtest_trace
from dopd.control.forecast.base import (
    FORECASTERS,
    Forecast,
    Forecaster,
    ResidualBand,
    make_forecaster,
    parse_spec,
    split_specs,
)
from dopd.control.forecast.multi import SIGNALS, LoadForecast, MultiForecaster

__all__ = [
    "FORECASTERS",
    "SIGNALS",
    "BacktestResult",
    "Forecast",
    "Forecaster",
    "LoadForecast",
    "MultiForecaster",
    "ResidualBand",
    "Score",
    "backtest",
    "backtest_trace",
    "make_forecaster",
    "parse_spec",
    "split_specs",
]
