"""The live controller's outcome log: P50/P90, attainment, goodput, arrival rate per interval,
and the policy plan views of /v1/cluster."""

from __future__ import annotations

import dataclasses

import pytest

from dopd.control.manager import DecisionLog, Split
from dopd.serve.insight import Prediction, latest_forecast, latest_plan, plan_view, policy_log
from dopd.serve.outcomes import OutcomeLog
from dopd.types import SLO, RequestOutcome, RequestState


def outcome(state: RequestState, ttft: float | None, tpot: float | None) -> RequestOutcome:
    first = None if ttft is None else 100.0 + ttft
    finish = None if first is None else first + (tpot or 0.0) * 9
    return RequestOutcome(1, 100.0, 10, 10, state, first, finish)


def test_summary_counts_the_interval_only() -> None:
    log = OutcomeLog(SLO(0.5, 0.1))
    for i in range(10):
        log.arrival(100.0 + i)
    # nine met (TTFT 0.1..0.4 s, TPOT 50 ms), one too slow, one rejected; one before the window
    log.end(99.0, outcome(RequestState.FINISHED, 0.1, 0.05))
    for i in range(9):
        log.end(101.0 + i * 0.5, outcome(RequestState.FINISHED, 0.1 + 0.03 * i, 0.05))
    log.end(106.0, outcome(RequestState.FINISHED, 2.0, 0.05))
    log.end(106.5, outcome(RequestState.REJECTED, None, None))
    s = log.summary(100.0, 110.0, t0=90.0)
    assert (s.start, s.end, s.window_s) == (10.0, 20.0, 10.0)
    assert (s.ended, s.finished) == (11, 10)
    assert s.attainment == pytest.approx(9 / 11) and s.goodput_rps == pytest.approx(0.9)
    assert s.arrival_rps == pytest.approx(1.0)
    assert s.ttft_p50_s == pytest.approx(0.22, abs=0.02) and s.ttft_p90_s is not None
    assert 0.3 < s.ttft_p90_s < 2.0 and s.tpot_p90_s == pytest.approx(0.05)
    empty = log.summary(200.0, 205.0)
    assert empty.ended == 0 and empty.ttft_p90_s is None and empty.attainment is None
    assert empty.goodput_rps == 0.0 and empty.arrival_rps == 0.0
    log.evict(100.0 + log.horizon_s + 50)
    assert log.summary(0.0, 1e9).ended == 0


def test_without_slo_there_is_no_attainment() -> None:
    log = OutcomeLog(None)
    log.end(1.0, outcome(RequestState.FINISHED, 0.1, 0.05))
    s = log.summary(0.0, 2.0)
    assert s.finished == 1 and s.attainment is None and s.goodput_rps is None


def test_plan_view_types_a_decision_record() -> None:
    class Policy:
        log = DecisionLog("dopd")

    log = policy_log(Policy())
    assert log is not None and policy_log(object()) is None
    assert latest_plan(log) is None and latest_forecast(log) == (None, None)
    log.add(3.0, reason="2P:1D -> 1P:2D | solver", target=Split(1, 2), current=Split(2, 1),
            forecast={"rate": 2.0, "rate_upper": 3.5},
            predicted={"ttft_p90": 0.05, "tpot_p90": 0.04, "attainment": 0.99, "rate": 3.5},
            predicted_current={"ttft_p90": float("inf"), "tpot_p90": float("inf"),
                               "attainment": 0.0, "rate": 3.5},
            why="forecast 2.00 req/s ...")
    log.settle(5.0, {"finished": 7, "ttft_p90": 0.06, "tpot_p90": 0.05, "attainment": 1.0})
    view = plan_view(log.records[0])
    assert (view.current, view.target, view.acted) == ("2P:1D", "1P:2D", False)
    assert (view.forecast_rps, view.forecast_upper_rps, view.planned_rps) == (2.0, 3.5, 3.5)
    assert view.predicted_current == Prediction(None, None, 0.0, True)
    assert view.predicted_target == Prediction(0.05, 0.04, 0.99, False)
    assert view.observed_next is not None and view.observed_next.finished == 7
    assert view.why == "forecast 2.00 req/s ..." and view.detail.startswith("2P:1D")
    assert latest_forecast(log) == (2.0, 3.5)
    log.add(6.0, reason="no forecast in this record")
    assert latest_forecast(log) == (2.0, 3.5)  # the newest record that has one
    later = latest_plan(log)
    assert later is not None and later.why == "no forecast in this record"
    assert later.forecast_rps is None and later.predicted_target is None
    assert dataclasses.asdict(view)["predicted_current"]["overloaded"] is True
