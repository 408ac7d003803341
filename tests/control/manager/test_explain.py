"""Decision reasons in words: the SLO a split misses, the forecast, holds vs changes."""

from __future__ import annotations

import math

from dopd.control.manager import Split
from dopd.control.manager.explain import Outlook, forecast_text, outlook_text, rate, seconds, why
from dopd.types import SLO

SLO_ = SLO(ttft_s=0.5, tpot_s=0.1, attainment=0.9)


def test_latency_and_rate_read_as_people_write_them() -> None:
    assert seconds(0.82) == "820 ms" and seconds(1.25) == "1.25 s"
    assert seconds(math.inf) == "unbounded" and seconds(None) == "?"
    assert rate(8.23e-05) == "0.00" and rate(2.861) == "2.86" and rate(12.34) == "12.3"


def test_forecast_text_names_the_rate_planned_for() -> None:
    assert forecast_text(None, None, None) == ""
    assert forecast_text(3.1, 4.2, 4.2) == "forecast 3.10 req/s (upper 4.20, planned for)"
    assert forecast_text(3.1, 4.2, 3.1) == "forecast 3.10 req/s (upper 4.20)"
    assert forecast_text(3.1, 3.1, 3.1) == "forecast 3.10 req/s"


def test_a_change_says_which_slo_the_old_split_misses() -> None:
    old = Outlook(Split(2, 1), 0.8, math.inf, 0.2)
    new = Outlook(Split(1, 2), 0.05, 0.06, 0.97)
    text = why(SLO_, current=old, target=new, forecast=forecast_text(12.3, 14.0, 14.0))
    assert text.startswith("forecast 12.3 req/s (upper 14.0, planned for); 2P:1D predicted "
                           "TTFT p90 800 ms > SLO 500 ms, TPOT p90 unbounded > SLO 100 ms, "
                           "attainment 20% < 90% -> 1P:2D predicted TTFT p90 50 ms")
    assert "prefill -> decode" not in text
    assert outlook_text(new, SLO_) == ("1P:2D predicted TTFT p90 50 ms, TPOT p90 60 ms, "
                                       "attainment 97%")


def test_a_hold_says_whether_the_split_meets_the_slo() -> None:
    ok = Outlook(Split(2, 1), 0.2, 0.05, 0.99)
    assert why(SLO_, current=ok, target=ok).endswith("(holds)")
    short = Outlook(Split(2, 1), 0.9, 0.05, 0.5)
    assert why(SLO_, current=short, target=short, trigger="SLO alarm (x)").startswith(
        "SLO alarm (x); keep 2P:1D predicted TTFT p90 900 ms > SLO 500 ms")
    assert Outlook.of(Split(1, 1), None) is None
    assert Outlook.of(Split(1, 1), {"tpot_p90": 0.03}) == Outlook(Split(1, 1), None, 0.03, None)
