import json
import math
from pathlib import Path

import numpy as np
import pytest

from dopd.control.forecast import backtest, backtest_trace
from dopd.control.monitor import WindowSeries, window_series
from dopd.errors import DopdError
from dopd.workload import Workload, load_workload

CODE = "azure-code"


def _series(rate: np.ndarray, mean_in: np.ndarray | None = None) -> WindowSeries:
    n = len(rate)
    mean_in = np.full(n, 100.0) if mean_in is None else mean_in
    ones = np.ones(n)
    return WindowSeries(10.0, 10.0 * np.arange(1, n + 1), (rate * 10).astype(np.int64), rate,
                        mean_in, mean_in**2, 5 * ones, 25 * ones)


def test_constant_model_scores_equal_a_manual_recomputation() -> None:
    rng = np.random.default_rng(0)
    rate = 5 + rng.normal(0, 1, 50).cumsum() * 0.1 + rng.normal(0, 0.5, 50)
    res = backtest(_series(rate), ["constant", "ewma(0.5)"], signals=("rate",))
    s = res.score("rate", "constant")
    err = rate[:-1] - rate[1:]  # predict window t+1 by window t
    assert s.n == 49
    assert s.mae == pytest.approx(np.mean(np.abs(err)))
    assert s.rmse == pytest.approx(np.sqrt(np.mean(err**2)))
    assert s.mape == pytest.approx(np.mean(np.abs(err) / rate[1:]))
    assert res.score("rate", "ewma(0.5)").n == 49


def test_models_are_scored_on_the_same_windows_and_nan_windows_are_skipped() -> None:
    rate = np.array([1.0, 2.0, 0.0, 3.0, 4.0, 0.0, 5.0, 6.0, 7.0])
    mean_in = np.where(rate > 0, 100.0 + rate, np.nan)
    res = backtest(_series(rate, mean_in), ["constant", "holt"], signals=("rate", "mean_in"))
    assert res.score("rate", "constant").n == 8
    assert res.score("mean_in", "constant").n == res.score("mean_in", "holt").n == 6
    # MAPE skips the zero-rate windows instead of dividing by zero.
    assert math.isfinite(res.score("rate", "constant").mape)


def test_best_picks_lowest_error_and_nominal_coverage() -> None:
    y = 10 + 0.5 * np.arange(60)  # a ramp: Holt is exact, the naive forecast lags by one step
    res = backtest(_series(y), ["constant", "holt(0.5,0.5)"], signals=("rate",), warmup=2)
    assert res.best("rate") == "holt(0.5,0.5)"
    assert res.score("rate", "holt(0.5,0.5)").mae == pytest.approx(0.0, abs=1e-9)
    assert res.score("rate", "constant").mae == pytest.approx(0.5)
    # Every window exceeds the last by 0.5, and the residual band learns exactly that offset.
    assert res.score("rate", "constant").coverage == 1.0
    with pytest.raises(DopdError, match="metric"):
        res.best("rate", "r2")


def test_backtest_rejects_bad_input() -> None:
    s = _series(np.arange(1.0, 30.0))
    with pytest.raises(DopdError, match="unknown forecaster"):
        backtest(s, ["constant", "prophet"])
    with pytest.raises(DopdError, match="duplicate"):
        backtest(s, ["ewma", "ewma"])
    with pytest.raises(DopdError, match="no models"):
        backtest(s, [])
    with pytest.raises(DopdError, match="unknown signal"):
        backtest(s, ["ewma"], signals=("p99",))
    with pytest.raises(DopdError, match="need >= 3"):
        backtest(_series(np.array([1.0, 2.0, 3.0])), ["ewma"])


def test_backtest_on_the_azure_code_trace() -> None:
    w = load_workload(CODE)
    series = window_series(w, 60.0)
    assert len(series) == int(w.duration_s // 60)
    assert int(series.count.sum()) <= len(w)
    models = ["constant", "ewma", "holt", "arima"]
    res = backtest(series, models)
    assert res.models == tuple(models) and res.signals == ("rate", "mean_in", "mean_out")
    nonempty_after_first = int((series.count[1:] > 0).sum())
    assert series.count[0] > 0 and nonempty_after_first < len(series) - 1  # on/off bursts
    for signal in res.signals:
        rows = [res.score(signal, m) for m in models]
        # Every window scores the rate; length moments only exist for non-empty windows.
        expected_n = len(series) - 1 if signal == "rate" else nonempty_after_first
        assert {r.n for r in rows} == {expected_n}
        for r in rows:
            assert r.mae > 0 and r.rmse >= r.mae and 0.0 <= r.coverage <= 1.0
            assert r.coverage >= 0.6  # the band is meant to cover ~90% of windows
    # The naive model is the baseline; smoothing helps on this bursty trace.
    assert res.score("mean_in", "ewma").mae < res.score("mean_in", "constant").mae
    arima = res.score("rate", "arima")
    assert 0 < arima.fallback_share < 0.3  # the first windows, before the first fit
    payload = json.loads(json.dumps(res.as_dict()))
    assert payload["best"]["rate"]["mae"] in models
    assert backtest_trace(str(CODE), 60.0, ["constant"]).score("rate", "constant") == \
        res.score("rate", "constant")


def test_backtest_trace_rejects_a_bad_window(tmp_path: Path) -> None:
    with pytest.raises(DopdError, match="window"):
        backtest_trace(str(tmp_path / "missing.csv"), 0.0, ["ewma"])
    w = Workload.from_arrays("w", np.arange(100.0), np.full(100, 10), np.full(100, 2))
    assert len(window_series(w, 10.0)) == 9
