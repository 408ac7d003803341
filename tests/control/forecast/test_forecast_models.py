import math
import warnings

import numpy as np
import pytest

from dopd.control.forecast import (
    FORECASTERS,
    Forecaster,
    ResidualBand,
    make_forecaster,
    parse_spec,
    split_specs,
)
from dopd.control.forecast.arima import ArimaForecaster
from dopd.control.forecast.forecasters import (
    EwmaForecaster,
    HoltForecaster,
    HoltWintersForecaster,
)
from dopd.errors import DopdError


def _walk(f: Forecaster, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-step forecasts (mean, upper) of y[t] made before seeing y[t]; NaN until ready."""
    mean = np.full(len(y), np.nan)
    upper = np.full(len(y), np.nan)
    for t, v in enumerate(y):
        if f.ready:
            fc = f.predict()
            mean[t], upper[t] = fc.mean, fc.upper
        f.update(float(v))
    return mean, upper


def test_registry_has_every_model() -> None:
    assert set(FORECASTERS.names()) == {"constant", "ewma", "holt", "holt-winters", "arima"}


@pytest.mark.parametrize(
    "spec", ["constant", "ewma", "ewma(0.3)", "holt", "holt(0.5,0.1)", "holt-winters(4)", "arima",
             "arima(1,0,1)"]
)
def test_constant_series_is_forecast_exactly(spec: str) -> None:
    f = make_forecaster(spec)
    mean, _ = _walk(f, np.full(60, 7.25))
    assert np.allclose(mean[1:], 7.25, rtol=0, atol=1e-9)
    fc = f.predict()
    assert fc.mean == pytest.approx(7.25, abs=1e-9)
    assert fc.upper == pytest.approx(7.25, abs=1e-9)  # no residuals, no band
    assert fc.note == ""


@pytest.mark.parametrize("spec", ["holt", "holt(0.3,0.1)", "holt(0.9,0.9)"])
def test_linear_trend_is_exact_for_holt_after_warmup(spec: str) -> None:
    y = 3.0 + 0.75 * np.arange(80)
    mean, upper = _walk(make_forecaster(spec), y)
    assert np.allclose(mean[2:], y[2:], rtol=0, atol=1e-9)
    # The band keeps the warm-up miss (y1 - y0) until the empirical quantile outvotes it.
    assert np.all(upper[2:] >= mean[2:])
    assert np.allclose(upper[30:], y[30:], rtol=0, atol=1e-9)


def test_ewma_lags_a_trend_that_holt_follows() -> None:
    y = 3.0 + 0.75 * np.arange(80)
    mean, _ = _walk(make_forecaster("ewma(0.3)"), y)
    # The EWMA steady-state lag on a slope b is b / alpha.
    assert mean[-1] == pytest.approx(y[-1] - 0.75 / 0.3, rel=1e-6)


def test_holt_recursion_matches_statsmodels() -> None:
    from statsmodels.tsa.holtwinters import Holt

    rng = np.random.default_rng(0)
    y = 50 + np.cumsum(rng.normal(0.2, 1.0, 120)) + rng.normal(0, 2.0, 120)
    f = HoltForecaster(0.4, 0.2)
    mean, _ = _walk(f, y[:2])
    level, trend = f.level, f.trend
    mean, _ = _walk(f, y[2:])
    res = Holt(y[2:], initialization_method="known", initial_level=level,
               initial_trend=trend).fit(smoothing_level=0.4, smoothing_trend=0.2, optimized=False)
    assert np.allclose(mean[1:], res.fittedvalues[1:], rtol=1e-12, atol=1e-9)
    assert f.predict().mean == pytest.approx(float(res.forecast(1)[0]), rel=1e-12)


def test_holt_winters_recursion_matches_statsmodels() -> None:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    rng = np.random.default_rng(1)
    m, n = 6, 90
    t = np.arange(n)
    y = 10 + 0.1 * t + 3 * np.sin(2 * np.pi * t / m) + rng.normal(0, 0.5, n)
    f = HoltWintersForecaster(m, 0.3, 0.05, 0.2)
    _walk(f, y[: 2 * m])
    assert f.predict().note == ""  # initialised after two seasons
    level, trend, seasonal = f.level, f.trend, f.seasonal.copy()
    mean, _ = _walk(f, y[2 * m :])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ExponentialSmoothing(
            y[2 * m :], trend="add", seasonal="add", seasonal_periods=m,
            initialization_method="known", initial_level=level, initial_trend=trend,
            initial_seasonal=seasonal,
        ).fit(smoothing_level=0.3, smoothing_trend=0.05, smoothing_seasonal=0.2, optimized=False)
    assert np.allclose(mean, res.fittedvalues, rtol=1e-12, atol=1e-9)


def test_holt_winters_beats_ewma_on_a_seasonal_series() -> None:
    rng = np.random.default_rng(2)
    m, n = 12, 240
    t = np.arange(n)
    y = 20 + 6 * np.sin(2 * np.pi * t / m) + rng.normal(0, 1.0, n)
    hw, _ = _walk(make_forecaster(f"holt-winters({m})"), y)
    ew, _ = _walk(make_forecaster("ewma"), y)
    late = slice(4 * m, None)
    mae_hw = np.mean(np.abs(hw[late] - y[late]))
    mae_ew = np.mean(np.abs(ew[late] - y[late]))
    assert mae_hw < 0.5 * mae_ew
    assert mae_hw < 1.2  # close to the noise floor E|N(0,1)| = 0.8


def test_holt_winters_warms_up_with_holt_and_says_so() -> None:
    f = HoltWintersForecaster(5)
    for v in range(7):
        f.update(float(v))
    fc = f.predict()
    assert "warming up (7/10" in fc.note
    assert fc.mean == pytest.approx(7.0)  # Holt on a line


def test_tuned_ewma_adapts_alpha_to_the_series() -> None:
    rng = np.random.default_rng(3)
    noise = 100 + rng.normal(0, 5, 150)  # best: heavy smoothing
    walk = 100 + np.cumsum(rng.normal(0, 5, 150))  # best: follow the last value
    f_noise, f_walk = EwmaForecaster(), EwmaForecaster()
    _walk(f_noise, noise)
    _walk(f_walk, walk)
    assert f_noise.alpha <= 0.2
    assert f_walk.alpha >= 0.8


@pytest.mark.parametrize("quantile", [0.75, 0.9])
def test_upper_bound_coverage_is_near_nominal_on_noisy_data(quantile: float) -> None:
    rng = np.random.default_rng(4)
    y = 10 + rng.normal(0, 1.0, 3000)
    mean, upper = _walk(make_forecaster("ewma(0.1)", quantile=quantile), y)
    covered = y[50:] <= upper[50:]
    assert abs(covered.mean() - quantile) < 0.025
    assert np.all(upper[1:] >= mean[1:])


def test_upper_bound_follows_skewed_bursts() -> None:
    # Right-skewed residuals: the empirical quantile covers them, a symmetric band would not.
    rng = np.random.default_rng(5)
    y = 5 + rng.exponential(2.0, 3000)
    _, upper = _walk(make_forecaster("ewma(0.05)"), y)
    assert abs(np.mean(y[100:] <= upper[100:]) - 0.9) < 0.025


def test_residual_band_uses_normal_approximation_when_short() -> None:
    band = ResidualBand(0.9, window=50, min_empirical=20)
    assert band.offset() == 0.0
    for r in (1.0, -1.0, 1.0, -1.0):
        band.add(r)
    assert band.offset() == pytest.approx(1.2815515655446004)  # z_0.9 * rms
    for _ in range(30):
        band.add(-5.0)  # a model that over-predicts: never a negative offset
    assert band.offset() == 0.0


def _arma_series(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(0, 1, n + 1)
    y = np.zeros(n)
    for t in range(1, n):
        y[t] = 0.7 * y[t - 1] + e[t + 1] + 0.4 * e[t]
    return 30 + 3 * y


@pytest.mark.parametrize("order", [(1, 0, 1), (1, 1, 1), (2, 1, 1)])
def test_arima_recursion_matches_statsmodels_kalman_forecasts(order: tuple[int, int, int]) -> None:
    from statsmodels.tsa.arima.model import ARIMA

    y = _arma_series(160, seed=6)
    f = ArimaForecaster(*order, refit_every=1000, history=60, min_obs=60)  # one fit, at 60
    mean, _ = _walk(f, y)
    fit = f.fit
    assert fit is not None and f.n_fits == 1
    z = (y - fit.loc) / fit.scale - (fit.mu if order[1] == 0 else 0.0)
    params = np.r_[fit.ar, fit.ma, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ARIMA(z, order=order, trend="n").filter(params)
    exact = fit.loc + fit.scale * (np.asarray(res.predict()) + (fit.mu if order[1] == 0 else 0))
    # After a burn-in the conditional recursion equals the exact (Kalman) one-step forecast.
    assert np.allclose(mean[90:], exact[90:], rtol=1e-6, atol=1e-6)


def test_arima_beats_the_naive_forecast_on_an_arma_series() -> None:
    y = _arma_series(400, seed=7)
    ar, _ = _walk(make_forecaster("arima(1,0,1)"), y)
    naive, _ = _walk(make_forecaster("constant"), y)
    late = slice(100, None)
    assert np.mean((ar[late] - y[late]) ** 2) < 0.85 * np.mean((naive[late] - y[late]) ** 2)


def test_arima_falls_back_to_ewma_with_too_little_data() -> None:
    f = ArimaForecaster(1, 1, 1)
    ew = EwmaForecaster(0.3)
    for v in (5.0, 6.0, 4.0, 7.0):
        f.update(v)
        ew.update(v)
    fc = f.predict()
    assert "too little data (4 < 10 windows)" in fc.note and "ewma" in fc.note
    assert fc.mean == pytest.approx(ew.predict().mean)
    for v in range(10):
        f.update(5.0 + (v % 3))
    assert f.predict().note == "" and f.fit is not None


def test_arima_failed_fits_fall_back_and_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import statsmodels.tsa.arima.estimators.innovations as innovations

    real = innovations.innovations_mle
    y = _arma_series(60, seed=8)
    f = ArimaForecaster(1, 0, 1, refit_every=5)

    def broken(*args, **kwargs):
        raise np.linalg.LinAlgError("singular")

    monkeypatch.setattr(innovations, "innovations_mle", broken)
    for v in y[:12]:
        f.update(v)
    fc = f.predict()
    assert "fit failed (LinAlgError)" in fc.note and "ewma fallback" in fc.note
    monkeypatch.setattr(innovations, "innovations_mle", real)
    for v in y[12:20]:  # the next try (5 windows later) succeeds
        f.update(v)
    assert f.predict().note == ""
    monkeypatch.setattr(innovations, "innovations_mle", broken)
    for v in y[20:30]:
        f.update(v)
    fc = f.predict()
    assert "using the last fit" in fc.note and math.isfinite(fc.mean)
    assert f.n_failed_fits >= 2


def test_spec_parsing() -> None:
    assert parse_spec("arima(2, 1, 1)") == ("arima", (2, 1, 1), {})
    assert parse_spec(" holt(alpha=0.4, beta=0.2) ") == ("holt", (), {"alpha": 0.4, "beta": 0.2})
    assert split_specs("constant, ewma(0.3),arima(1,1,1)") == ["constant", "ewma(0.3)",
                                                                "arima(1,1,1)"]
    f = make_forecaster("holt(alpha=0.4, beta=0.2)")
    assert isinstance(f, HoltForecaster) and (f.alpha, f.beta) == (0.4, 0.2)
    a = make_forecaster("ARIMA(2,1,2)", quantile=0.8)
    assert isinstance(a, ArimaForecaster) and a.order == (2, 1, 2) and a.quantile == 0.8


@pytest.mark.parametrize(
    "spec",
    ["prophet", "ewma(2)", "ewma(0)", "ewma(0.1,0.2,0.3)", "ewma(beta=0.1)", "arima(1.5,1,1)",
     "arima(0,0,0)", "holt-winters(1)", "ewma(0.3", "ewma)(", "ewma(x)", "", "holt(,)",
     "ewma(quantile=0.5)"],
)
def test_bad_specs_raise_dopd_error(spec: str) -> None:
    with pytest.raises(DopdError):
        make_forecaster(spec)


def test_bad_model_lists_raise() -> None:
    for text in ("ewma,,holt", "arima(1,1", "ewma)"):
        with pytest.raises(DopdError):
            split_specs(text)


def test_predict_before_update_and_non_finite_updates_raise() -> None:
    f = make_forecaster("ewma")
    assert not f.ready
    with pytest.raises(DopdError, match="no observations"):
        f.predict()
    with pytest.raises(DopdError, match="finite"):
        f.update(math.nan)
    with pytest.raises(DopdError):
        make_forecaster("ewma", quantile=0.3)
