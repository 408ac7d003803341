"""Benchmarking: SLO metrics of a run and the max-goodput search."""

from dopd.bench.goodput import MaxGoodputResult, max_goodput
from dopd.metrics.summary import (
    MetricsSummary,
    RequestLatencies,
    goodput_duration,
    request_latencies,
    summarize,
    summarize_arrays,
    summarize_result,
)

__all__ = [
    "MaxGoodputResult",
    "MetricsSummary",
    "RequestLatencies",
    "goodput_duration",
    "max_goodput",
    "request_latencies",
    "summarize",
    "summarize_arrays",
    "summarize_result",
]
