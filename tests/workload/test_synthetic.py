"""synthetic_workload: seeding, modes, and the combination with trace lengths."""

from __future__ import annotations

import numpy as np
import pytest

from dopd.errors import DopdError
from dopd.workload import (
    Empirical,
    Fixed,
    Gamma,
    LengthTable,
    LogNormal,
    MixShift,
    Poisson,
    StepRate,
    synthetic_workload,
)


def test_same_seed_identical_arrays_and_different_seed_differs() -> None:
    lengths = LogNormal(1000, 1.0, 200, 1.0)
    a = synthetic_workload(Gamma(10.0, 2.0), lengths, duration_s=120.0, seed=5)
    b = synthetic_workload(Gamma(10.0, 2.0), lengths, duration_s=120.0, seed=5)
    c = synthetic_workload(Gamma(10.0, 2.0), lengths, duration_s=120.0, seed=6)
    for column in ("arrival_s", "prompt_tokens", "output_tokens"):
        np.testing.assert_array_equal(getattr(a, column), getattr(b, column))
    assert not np.array_equal(a.arrival_s[:50], c.arrival_s[:50])


def test_arrivals_independent_of_length_sampler() -> None:
    a = synthetic_workload(Poisson(5.0), Fixed(1, 1), num_requests=300, seed=1)
    b = synthetic_workload(Poisson(5.0), LogNormal(500, 2, 50, 2), num_requests=300, seed=1)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)


def test_count_and_duration_modes() -> None:
    w = synthetic_workload(Poisson(20.0), Fixed(10, 5), num_requests=1000, seed=0, name="p")
    assert len(w) == 1000 and w.name == "p" and w.arrival_s[0] == 0.0
    assert w.rate_rps == pytest.approx(20.0, rel=0.1)
    w = synthetic_workload(Poisson(20.0), Fixed(10, 5), duration_s=100.0, seed=0)
    assert w.duration_s < 100.0 and len(w) == pytest.approx(2000, rel=0.1)
    with pytest.raises(DopdError, match="exactly one"):
        synthetic_workload(Poisson(1.0), Fixed(1, 1))
    with pytest.raises(DopdError, match="no request arrives"):
        synthetic_workload(StepRate((0.0,), (0.0,)), Fixed(1, 1), duration_s=10.0)
    with pytest.raises(DopdError, match="seed"):
        synthetic_workload(Poisson(1.0), Fixed(1, 1), num_requests=1, seed=-1)


def test_length_shift_happens_at_workload_time() -> None:
    shift = MixShift(Fixed(100, 400), Fixed(4000, 20), start_s=60.0)
    w = synthetic_workload(Poisson(50.0), shift, duration_s=120.0, seed=3)
    after = w.arrival_s >= 60.0
    assert np.all(w.prompt_tokens[after] == 4000) and np.all(w.prompt_tokens[~after] == 100)


def test_trace_lengths_with_synthetic_arrivals() -> None:
    table = LengthTable("tiny", [100, 2000], [300, 5])
    w = synthetic_workload(Gamma(8.0, 3.0), Empirical(table), num_requests=2000, seed=2)
    assert set(zip(w.prompt_tokens.tolist(), w.output_tokens.tolist(), strict=True)) == {
        (100, 300), (2000, 5)}
    assert w.interarrival_cv() == pytest.approx(3.0, rel=0.2)
