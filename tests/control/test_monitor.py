import math

import numpy as np
import pytest

from dopd.control.monitor import (
    DEFAULT_HIST_EDGES,
    ArrivalMonitor,
    InstanceSignals,
    LatencyWindow,
    window_series,
)
from dopd.errors import DopdError
from dopd.types import InstanceState, Role
from dopd.workload import Workload


def _moments(values: np.ndarray) -> tuple[float, float, float]:
    if values.size == 0:
        return math.nan, math.nan, math.nan
    v = values.astype(np.float64)
    return float(v.mean()), float(np.mean(v * v)), float(v.std() / v.mean())


def _hist(values: np.ndarray, edges: tuple[float, ...]) -> tuple[int, ...]:
    # Right-closed bins: (edges[i-1], edges[i]].
    idx = np.searchsorted(np.asarray(edges), values, side="left")
    return tuple(int(c) for c in np.bincount(idx, minlength=len(edges)))


def _assert_same(actual: float, expected: float) -> None:
    if math.isnan(expected):
        assert math.isnan(actual)
    else:
        assert actual == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_snapshot_matches_brute_force_recomputation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    window, out_window = 5.0, 8.0
    mon = ArrivalMonitor(window, output_window_s=out_window, start_s=0.0)
    arrivals: list[tuple[float, int]] = []
    outputs: list[tuple[float, int]] = []
    t = 0.0
    for _ in range(3000):
        t += float(rng.exponential(0.05)) * (0 if rng.random() < 0.1 else 1)  # ties happen
        kind = rng.random()
        if kind < 0.6:
            n = int(rng.lognormal(6.5, 1.2)) + 1
            if rng.random() < 0.05:
                n = int(rng.choice(DEFAULT_HIST_EDGES[:-1]))  # exactly on a bin edge
            mon.observe_arrival(t, n)
            arrivals.append((t, n))
        elif kind < 0.9:
            n = int(rng.integers(1, 2000))
            mon.observe_output(t, n)
            outputs.append((t, n))
        else:
            snap = mon.snapshot(t)
            ins = np.array([n for s, n in arrivals if s > t - window], dtype=np.int64)
            outs = np.array([n for s, n in outputs if s > t - out_window], dtype=np.int64)
            start = max(t - window, 0.0)
            assert snap.window_start_s == start and snap.window_end_s == t
            assert snap.count == ins.size and snap.out_count == outs.size
            _assert_same(snap.rate_rps, ins.size / (t - start) if t > start else 0.0)
            for got, want in zip((snap.mean_in, snap.m2_in, snap.cv_in), _moments(ins),
                                 strict=True):
                _assert_same(got, want)
            for got, want in zip((snap.mean_out, snap.m2_out, snap.cv_out), _moments(outs),
                                 strict=True):
                _assert_same(got, want)
            if ins.size:
                p50, p90 = np.percentile(ins, [50, 90])
                _assert_same(snap.p50_in, float(p50))
                _assert_same(snap.p90_in, float(p90))
            assert snap.in_hist == _hist(ins, DEFAULT_HIST_EDGES)
            assert sum(snap.in_hist) == snap.count


def test_first_window_rate_is_over_the_elapsed_time_only() -> None:
    mon = ArrivalMonitor(10.0)
    for t in (100.0, 101.0, 102.0):
        mon.observe_arrival(t, 10)
    snap = mon.snapshot(104.0)
    assert snap.window_start_s == 100.0  # the first call starts the clock
    assert snap.rate_rps == pytest.approx(3 / 4.0)
    later = mon.snapshot(111.5)
    assert later.window_start_s == 101.5
    assert later.count == 1 and later.rate_rps == pytest.approx(1 / 10.0)


def test_empty_window_has_zero_rate_and_nan_moments() -> None:
    mon = ArrivalMonitor(1.0, start_s=0.0)
    mon.observe_arrival(0.5, 100)
    snap = mon.snapshot(3.0)
    assert snap.count == 0 and snap.rate_rps == 0.0
    assert math.isnan(snap.mean_in) and math.isnan(snap.p90_in) and math.isnan(snap.mean_out)
    assert sum(snap.in_hist) == 0


def test_a_value_on_a_bin_edge_falls_in_the_lower_bin() -> None:
    mon = ArrivalMonitor(10.0, start_s=0.0, hist_edges=(10.0, 20.0, math.inf))
    for n in (10, 11, 20, 21, 0):
        mon.observe_arrival(1.0, n)
    assert mon.snapshot(1.0).in_hist == (2, 2, 1)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m.observe_arrival(1.0, -1), "non-negative integer"),
        (lambda m: m.observe_arrival(1.0, 2.5), "non-negative integer"),
        (lambda m: m.observe_arrival(1.0, "x"), "non-negative integer"),
        (lambda m: m.observe_output(math.nan, 3), "finite"),
        (lambda m: m.snapshot(4.0), "backwards"),
    ],
)
def test_bad_observations_raise(call, match: str) -> None:
    mon = ArrivalMonitor(10.0)
    mon.observe_arrival(5.0, 1)
    with pytest.raises(DopdError, match=match):
        call(mon)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_s": 0.0},
        {"window_s": -1.0},
        {"window_s": math.inf},
        {"window_s": 1.0, "output_window_s": 0.0},
        {"window_s": 1.0, "hist_edges": (10.0, 5.0, math.inf)},
        {"window_s": 1.0, "hist_edges": (10.0, 20.0)},
    ],
)
def test_bad_monitor_settings_raise(kwargs) -> None:
    with pytest.raises(DopdError):
        ArrivalMonitor(**kwargs)


def test_latency_window_quantile_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    lw = LatencyWindow(2.0)
    seen: list[tuple[float, float]] = []
    assert lw.quantile(0.0) is None
    t = 0.0
    for _ in range(500):
        t += float(rng.exponential(0.1))
        value = float(rng.gamma(2.0, 0.05))
        lw.observe(t, value)
        seen.append((t, value))
        inside = [v for s, v in seen if s > t - 2.0]
        assert lw.quantile(t, 0.9) == pytest.approx(float(np.quantile(inside, 0.9)))
    assert lw.quantile(t + 10.0) is None
    with pytest.raises(DopdError):
        lw.observe(t + 11.0, -1.0)


def test_instance_signals_validate_their_fields() -> None:
    sig = InstanceSignals(3, Role.PREFILL, InstanceState.ACTIVE, 4096, 0, 0.25, 0.031, 0.8, None)
    assert sig.role is Role.PREFILL and sig.tpot_p90_s is None
    with pytest.raises(DopdError, match="KV use"):
        InstanceSignals(3, Role.DECODE, InstanceState.ACTIVE, 0, 8, 1.5, 0.02)
    with pytest.raises(DopdError, match="queued prefill"):
        InstanceSignals(3, Role.DECODE, InstanceState.ACTIVE, -1, 8, 0.5, 0.02)
    with pytest.raises(DopdError, match="TTFT"):
        InstanceSignals(3, Role.DECODE, InstanceState.ACTIVE, 0, 8, 0.5, 0.02, math.nan)


def _random_workload(seed: int, n: int = 4000, rate: float = 20.0) -> Workload:
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1.0 / rate, n))
    arrival[n // 2 :] += 60.0  # a gap: empty windows
    prompt = rng.integers(1, 8000, n)
    output = rng.integers(1, 900, n)
    return Workload.from_arrays("random", arrival, prompt, output)


def test_window_series_matches_a_per_window_loop() -> None:
    w = _random_workload(4)
    window = 7.0
    s = window_series(w, window)
    n_full = int((w.arrival_s[-1] - w.arrival_s[0]) // window)
    assert len(s) == n_full  # the trailing partial window is dropped
    assert np.allclose(s.t, window * np.arange(1, n_full + 1))
    empty = 0
    for k in range(n_full):
        sel = (w.arrival_s >= k * window) & (w.arrival_s < (k + 1) * window)
        assert s.count[k] == sel.sum()
        assert s.rate[k] == pytest.approx(sel.sum() / window)
        for name, col in (("in", w.prompt_tokens), ("out", w.output_tokens)):
            mean, m2, _ = _moments(col[sel])
            _assert_same(float(getattr(s, f"mean_{name}")[k]), mean)
            _assert_same(float(getattr(s, f"m2_{name}")[k]), m2)
        empty += int(not sel.any())
    assert empty > 0, "the gap should leave empty windows"
    assert not s.rate.flags.writeable


def test_window_series_agrees_with_the_online_monitor() -> None:
    w = _random_workload(5, n=1500)
    window = 3.0
    # Start off the arrival grid: the monitor's windows are (t - W, t], the series' [t - W, t).
    s = window_series(w, window, start_s=-0.5)
    mon = ArrivalMonitor(window, start_s=-0.5)
    events = iter(zip(w.arrival_s.tolist(), w.prompt_tokens.tolist(), strict=True))
    pending = next(events)
    for k, t_end in enumerate(s.t.tolist()):
        while pending is not None and pending[0] < t_end:
            mon.observe_arrival(*pending)
            pending = next(events, None)
        snap = mon.snapshot(t_end)
        assert snap.count == s.count[k]
        _assert_same(snap.rate_rps, float(s.rate[k]))
        _assert_same(snap.mean_in, float(s.mean_in[k]))
        _assert_same(snap.m2_in, float(s.m2_in[k]))


def test_filled_carries_the_last_known_value_forward() -> None:
    w = Workload.from_arrays(
        "gaps", [0.0, 0.5, 5.5, 9.0, 9.5], [10, 30, 50, 70, 70], [1, 1, 2, 3, 3]
    )
    s = window_series(w, 2.0)
    assert len(s) == 4
    assert s.count.tolist() == [2, 0, 1, 0]
    f = s.filled()
    assert f.mean_in.tolist() == [20.0, 20.0, 50.0, 50.0]
    assert np.isnan(s.mean_in[1])
    assert f.rate.tolist() == s.rate.tolist()


def test_window_series_rejects_bad_input() -> None:
    w = Workload.from_arrays("short", [0.0, 1.0, 2.0], [1, 2, 3], [1, 1, 1])
    with pytest.raises(DopdError, match="less than one"):
        window_series(w, 30.0)
    with pytest.raises(DopdError, match="window"):
        window_series(w, 0.0)
    with pytest.raises(DopdError, match="unknown signal"):
        window_series(w, 1.0).signal("p99")
