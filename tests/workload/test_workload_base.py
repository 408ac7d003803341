"""Workload value: invariants, scaling, cutting, moments, request iteration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dopd.errors import DopdError
from dopd.types import RequestSpec
from dopd.workload import PrefixBlocks, Workload


def small() -> Workload:
    return Workload("w", [0.0, 1.0, 1.0, 4.0], [10, 20, 30, 40], [1, 2, 3, 4])


def test_invariants_and_basic_properties() -> None:
    w = small()
    assert len(w) == 4
    assert w.arrival_s.dtype == np.float64 and w.prompt_tokens.dtype == np.int64
    assert w.duration_s == 4.0
    assert w.rate_rps == pytest.approx(3 / 4)
    with pytest.raises(ValueError):
        w.arrival_s[0] = 3.0  # read-only


@pytest.mark.parametrize(
    ("arrival", "prompt", "output", "message"),
    [
        ([], [], [], "no requests"),
        ([1.0, 2.0], [1, 1], [1, 1], "first arrival"),
        ([0.0, 2.0, 1.0], [1, 1, 1], [1, 1, 1], "unsorted"),
        ([0.0, 1.0], [1, 0], [1, 1], "prompt_tokens"),
        ([0.0, 1.0], [1, 1], [0, 1], "output_tokens"),
        ([0.0, 1.0], [1, 1], [1], "differ in length"),
        ([0.0, math.nan], [1, 1], [1, 1], "non-finite"),
        ([0.0, 1.0], [1.5, 1], [1, 1], "whole numbers"),
    ],
)
def test_bad_construction(
    arrival: list[float], prompt: list[float], output: list[int], message: str
) -> None:
    with pytest.raises(DopdError, match=message):
        Workload("bad", arrival, prompt, output)


def test_from_arrays_sorts_stably_and_normalises() -> None:
    w = Workload.from_arrays("x", [5.0, 3.0, 5.0, 4.0], [1, 2, 3, 4], [5, 6, 7, 8])
    np.testing.assert_array_equal(w.arrival_s, [0.0, 1.0, 2.0, 2.0])
    np.testing.assert_array_equal(w.prompt_tokens, [2, 4, 1, 3])  # ties keep input order
    np.testing.assert_array_equal(w.output_tokens, [6, 8, 5, 7])


def test_rate_edge_cases() -> None:
    assert Workload("one", [0.0], [1], [1]).rate_rps == 0.0
    assert Workload("burst", [0.0, 0.0], [1, 1], [1, 1]).rate_rps == math.inf


def test_requests_yields_specs_in_order() -> None:
    specs = list(small().requests())
    assert specs[2] == RequestSpec(2, 1.0, 30, 3)
    assert [s.request_id for s in specs] == [0, 1, 2, 3]
    assert all(isinstance(s.prompt_tokens, int) for s in specs)


def test_scale_rate() -> None:
    w = small().scale_rate(2.0)
    np.testing.assert_allclose(w.arrival_s, [0.0, 0.5, 0.5, 2.0])
    assert w.rate_rps == pytest.approx(2 * small().rate_rps)
    np.testing.assert_array_equal(w.prompt_tokens, small().prompt_tokens)
    for bad in (0, -1.0, math.inf, math.nan):
        with pytest.raises(DopdError, match="rate scale"):
            small().scale_rate(bad)


def test_cut_window_and_count() -> None:
    w = small()
    c = w.cut(duration_s=2.0, start_s=0.5)  # arrivals 1.0, 1.0 in [0.5, 2.5)
    np.testing.assert_array_equal(c.arrival_s, [0.0, 0.0])
    np.testing.assert_array_equal(c.prompt_tokens, [20, 30])
    c = w.cut(max_requests=3, start_s=1.0)
    np.testing.assert_array_equal(c.arrival_s, [0.0, 0.0, 3.0])
    assert len(w.cut()) == 4
    assert len(w.cut(duration_s=4.0)) == 3  # the window is half-open
    with pytest.raises(DopdError, match="no requests"):
        w.cut(start_s=10.0)
    with pytest.raises(DopdError, match="max_requests"):
        w.cut(max_requests=0)
    with pytest.raises(DopdError, match="duration"):
        w.cut(duration_s=-1.0)


def test_length_moments_by_hand() -> None:
    m = Workload("m", [0.0, 1.0], [100, 300], [1, 3]).length_moments()
    assert m.prompt_mean == 200 and m.prompt_m2 == (100**2 + 300**2) / 2
    assert m.prompt_cv == pytest.approx(100 / 200)
    assert m.output_mean == 2 and m.output_cv == pytest.approx(0.5)


def test_summary_fields() -> None:
    s = small().summary()
    assert s["requests"] == 4 and s["duration_s"] == 4.0
    assert s["prompt_p50"] == 25.0 and s["output_max"] == 4
    assert "prefix_reuse_fraction" not in s


def test_prefix_blocks_take_and_reuse() -> None:
    blocks = PrefixBlocks([0, 1, 2, 0, 1, 3, 7], [0, 3, 3, 5, 7])
    assert blocks.blocks_of(1).size == 0
    taken = blocks.take(np.array([3, 0]))
    np.testing.assert_array_equal(taken.offsets, [0, 2, 5])
    np.testing.assert_array_equal(taken.ids, [3, 7, 0, 1, 2])
    assert blocks.reuse_fraction() == pytest.approx(2 / 7)
    w = Workload.from_arrays("p", [3.0, 0.0, 1.0, 2.0], [1, 2, 3, 4], [1, 1, 1, 1], blocks)
    assert w.prefix is not None
    assert w.prefix.blocks_of(0).size == 0  # old request 1 (arrival 0) moved first
    np.testing.assert_array_equal(w.prefix.blocks_of(3), [0, 1, 2])
    cut = w.cut(start_s=2.0)
    assert cut.prefix is not None and len(cut.prefix) == 2
    np.testing.assert_array_equal(cut.prefix.blocks_of(0), [3, 7])
    with pytest.raises(DopdError, match="prefix"):
        Workload("p", [0.0], [1], [1], blocks)


def test_large_workload_is_cheap() -> None:
    n = 77_000
    rng = np.random.default_rng(0)
    w = Workload.from_arrays("big", np.sort(rng.random(n)) * 3600, np.full(n, 5), np.full(n, 2))
    assert len(w.scale_rate(3).cut(duration_s=600)) > 0
    assert sum(1 for _ in w.requests()) == n
