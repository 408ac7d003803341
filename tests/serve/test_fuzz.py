"""Fuzzing real ``dopd serve`` processes (``benchmarks/bench_fuzz.py``'s generator and runner):
2,000 hypothesis-generated requests to an emulated deployment and 300 to a real-mode
disaggregated dopd-tiny deployment (its sampler sees every generated parameter), both
endpoints, JSON and streams. No 5xx answer or 5xx stream event, no worker crash, no transport
error, and a probe of ``/health`` from its own process never waits a second."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_fuzz import EMULATED, REAL, fuzz

MAX_STALL_S = 1.0


@pytest.mark.slow
@pytest.mark.parametrize(("args", "n"), [(EMULATED, 2000), (REAL, 300)],
                         ids=["emulated", "real"])
def test_fuzzed_requests_never_5xx_crash_or_stall(server_factory, args: list[str],
                                                  n: int) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(*args)
    report = fuzz(server.url, n, seed=13)
    assert report.sent >= n - n // 100
    assert sum(v for k, v in report.statuses.items() if k == 200) > n // 5  # most are not 4xx
    assert report.server_errors == 0, report.examples_5xx
    assert report.transport_errors == 0, report.examples_5xx
    assert report.crashes == 0
    assert report.probes > 10
    assert report.probe_max_s < MAX_STALL_S
    assert server.get("/health").status_code == 200
