import math

import numpy as np
import pytest

from dopd.control.forecast import SIGNALS, LoadForecast, MultiForecaster
from dopd.control.monitor import ArrivalMonitor
from dopd.errors import DopdError


def _feed(mf: MultiForecaster, n: int, **values: float) -> None:
    for _ in range(n):
        mf.update_values(**values)


def test_steady_load_is_forecast_exactly() -> None:
    mf = MultiForecaster("ewma")
    _feed(mf, 30, rate=4.0, mean_in=1000.0, m2_in=1.5e6, mean_out=200.0, m2_out=5e4)
    fc = mf.predict()
    assert (fc.rate, fc.rate_upper, fc.mean_in, fc.m2_in, fc.mean_out, fc.m2_out) == pytest.approx(
        (4.0, 4.0, 1000.0, 1.5e6, 200.0, 5e4)
    )
    assert fc.notes == ()
    assert fc.var_in == pytest.approx(5e5) and fc.scv_in == pytest.approx(0.5)
    assert fc.scv_out == pytest.approx(0.25)


def test_each_signal_has_its_own_model() -> None:
    mf = MultiForecaster({"rate": "holt", "mean_in": "constant"})
    assert mf.specs == {"rate": "holt", "mean_in": "constant", "m2_in": "ewma",
                        "mean_out": "ewma", "m2_out": "ewma"}
    for k in range(10):
        mf.update_values(rate=1.0 + k, mean_in=100.0 + 10 * (k % 2), m2_in=2e4, mean_out=5.0,
                         m2_out=30.0)
    fc = mf.predict()
    assert fc.rate == pytest.approx(11.0)  # Holt extrapolates the ramp
    assert fc.mean_in == 110.0  # the last window


def test_nan_windows_leave_the_length_forecast_unchanged() -> None:
    mf = MultiForecaster("constant")
    mf.update_values(rate=2.0, mean_in=500.0, m2_in=3e5, mean_out=50.0, m2_out=3000.0)
    mf.update_values(rate=0.0, mean_in=math.nan, m2_in=math.nan, mean_out=math.nan,
                     m2_out=math.nan)
    fc = mf.predict()
    assert fc.rate == 0.0 and fc.mean_in == 500.0 and fc.mean_out == 50.0


def test_forecasts_are_clamped_to_valid_moments() -> None:
    mf = MultiForecaster("holt(0.5,0.5)")
    # Falling rate and a second moment falling faster than the squared mean.
    for k in range(6):
        mf.update_values(rate=5.0 - k, mean_in=100.0, m2_in=12000.0 - 1000 * k,
                         mean_out=10.0, m2_out=100.0)
    raw = mf.forecast("m2_in").mean
    assert raw < 100.0**2
    fc = mf.predict()
    assert fc.rate == 0.0  # Holt went below 0
    assert fc.m2_in == pytest.approx(fc.mean_in**2)
    assert fc.rate_upper >= fc.rate


def test_defaults_cover_signals_not_yet_observed() -> None:
    mon = ArrivalMonitor(10.0, start_s=0.0)
    for t in np.linspace(0.5, 9.5, 19):
        mon.observe_arrival(float(t), 800)
    stats = mon.snapshot(10.0)
    assert math.isnan(stats.mean_out)  # nothing finished yet
    strict = MultiForecaster("ewma")
    strict.update(stats)
    assert not strict.ready
    with pytest.raises(DopdError, match="no mean_out observed"):
        strict.predict()
    lenient = MultiForecaster("ewma", defaults={"mean_out": 256.0, "m2_out": 256.0**2 * 1.5})
    lenient.update(stats)
    assert lenient.ready
    fc = lenient.predict()
    assert fc.rate == pytest.approx(1.9) and fc.mean_in == 800.0 and fc.mean_out == 256.0
    assert any("mean_out: default 256" in note for note in fc.notes)


def test_bad_inputs_raise() -> None:
    with pytest.raises(DopdError, match="unknown signal"):
        MultiForecaster({"p99_in": "ewma"})
    with pytest.raises(DopdError):
        MultiForecaster("prophet")
    with pytest.raises(DopdError, match="default"):
        MultiForecaster(defaults={"mean_out": -1.0})
    mf = MultiForecaster()
    with pytest.raises(DopdError, match="rate"):
        mf.update_values(rate=-1.0, mean_in=1.0, m2_in=1.0, mean_out=1.0, m2_out=1.0)
    with pytest.raises(DopdError):
        mf.update_values(rate=math.inf, mean_in=1.0, m2_in=1.0, mean_out=1.0, m2_out=1.0)


def test_load_forecast_checks_its_invariants() -> None:
    LoadForecast(1.0, 1.5, 10.0, 100.0, 5.0, 30.0)
    with pytest.raises(DopdError, match="rate_upper"):
        LoadForecast(2.0, 1.0, 10.0, 100.0, 5.0, 30.0)
    with pytest.raises(DopdError, match="m2_in"):
        LoadForecast(1.0, 1.0, 10.0, 90.0, 5.0, 30.0)
    with pytest.raises(DopdError, match="mean_out"):
        LoadForecast(1.0, 1.0, 10.0, 100.0, math.nan, 30.0)
    assert SIGNALS == ("rate", "mean_in", "m2_in", "mean_out", "m2_out")
