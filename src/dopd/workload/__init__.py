"""Workloads: traces, arrival processes, length samplers and the :class:`Workload` value."""

from dopd.workload.arrivals import (
    ARRIVALS,
    ArrivalProcess,
    Diurnal,
    Gamma,
    OnOff,
    Poisson,
    Replay,
    StepRate,
)
from dopd.workload.base import LengthMoments, PrefixBlocks, Workload
from dopd.workload.lengths import (
    LENGTHS,
    ClipContext,
    Empirical,
    Fixed,
    LengthSampler,
    LengthTable,
    LogNormal,
    MixShift,
    Uniform,
)
from dopd.workload.spec import make_arrival, make_lengths, parse_arrival, parse_lengths
from dopd.workload.synthetic import synthetic_workload
from dopd.workload.traces import (
    TRACE_FORMATS,
    detect_format,
    load_lengths,
    load_trace,
    load_workload,
    save_workload,
)

__all__ = [
    "ARRIVALS",
    "LENGTHS",
    "TRACE_FORMATS",
    "ArrivalProcess",
    "ClipContext",
    "Diurnal",
    "Empirical",
    "Fixed",
    "Gamma",
    "LengthMoments",
    "LengthSampler",
    "LengthTable",
    "LogNormal",
    "MixShift",
    "OnOff",
    "Poisson",
    "PrefixBlocks",
    "Replay",
    "StepRate",
    "Uniform",
    "Workload",
    "detect_format",
    "load_lengths",
    "load_trace",
    "load_workload",
    "make_arrival",
    "make_lengths",
    "parse_arrival",
    "parse_lengths",
    "save_workload",
    "synthetic_workload",
]
