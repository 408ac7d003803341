"""Experiment suites: the paper's comparison (and smaller ones) in simulation, with a report.

A suite (:mod:`~dopd.experiments.suite`, built-ins in :mod:`~dopd.experiments.suites`) is run by
:func:`~dopd.experiments.suite_runner.run_suite` and written out by
:func:`~dopd.experiments.report.write_report`; ``dopd experiment`` wraps both.
"""

from dopd.experiments.suite import Scenario, Suite, SyntheticSource, Targets, TraceSource
from dopd.experiments.suite_runner import ExperimentResult, Reporter, drop_unregistered, run_suite
from dopd.experiments.suites import SUITES, get_suite

__all__ = [
    "SUITES",
    "ExperimentResult",
    "Reporter",
    "Scenario",
    "Suite",
    "SyntheticSource",
    "Targets",
    "TraceSource",
    "drop_unregistered",
    "get_suite",
    "run_suite",
]
