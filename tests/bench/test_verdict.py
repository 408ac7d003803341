"""The verdict printed under a comparison: winner, ratio, target, latencies, rejected share."""

from __future__ import annotations

from typing import Any

from dopd.bench.verdict import standings, verdict


def rec(policy: str, attainment: float, goodput: float, rejected: int = 0,
        requests: int = 1000, ttft: Any = 0.5, tpot: Any = 0.05,
        **extra: Any) -> dict[str, Any]:
    return {"policy": policy, "requests": requests, "rejected": rejected,
            "attainment": attainment, "goodput_rps": goodput, "ttft_p90": ttft,
            "tpot_p90": tpot, **extra}


def test_dopd_against_the_best_baseline() -> None:
    records = {"colocated": rec("colocated", 0.584, 7.38, ttft=2.04, tpot=0.349),
               "static:best": rec("static:best(7:1)", 0.648, 8.19, ttft=2.59, tpot=0.014),
               "dopd": rec("dopd", 0.919, 11.62, rejected=112, requests=1482, ttft=0.614,
                           tpot=0.068)}
    lines = verdict(records, 0.9)
    assert lines[0] == ("Verdict: dopd wins. Goodput 11.62 req/s against 8.19 for "
                        "static:best(7:1), the best baseline (1.42x).")
    assert lines[1] == ("Attainment (requests meeting both SLOs): dopd 91.9%, "
                        "static:best(7:1) 64.8%.")
    assert lines[2] == "Only dopd meets the 90% target."
    assert lines[3] == ("P90 TTFT: dopd 0.61 s, static:best(7:1) 2.59 s. "
                        "P90 TPOT: dopd 68 ms, static:best(7:1) 14 ms.")
    assert lines[4] == ("Rejected at admission (counted as misses): dopd 7.6% (112 of 1482); "
                        "colocated and static:best(7:1) none.")
    assert len(lines) == 5


def test_a_baseline_that_beats_dopd_wins_the_verdict() -> None:
    records = {"colocated": rec("colocated", 0.97, 10.0), "dopd": rec("dopd", 0.85, 8.5)}
    lines = verdict(records, 0.9)
    assert lines[0] == ("Verdict: colocated wins. Goodput 10.00 req/s against 8.50 for dopd "
                        "(dopd at 0.85x).")
    assert lines[2] == "Only colocated meets the 90% target."
    assert not any(line.startswith("Rejected") for line in lines)


def test_tie_everyone_meets_the_target_and_nobody_does() -> None:
    tie = {"colocated": rec("colocated", 0.99, 7.85), "dopd": rec("dopd", 0.99, 7.83)}
    lines = verdict(tie, 0.9)
    assert lines[0].startswith("Verdict: dopd and colocated, the baseline, tie.")
    assert lines[2].startswith("Every policy meets the 90% target: raise the load")
    low = {"colocated": rec("colocated", 0.5, 3.0), "dopd": rec("dopd", 0.6, 3.6)}
    assert verdict(low, 0.99)[2].startswith("No policy meets the 99% target")
    some = {"a": rec("a", 0.95, 5.0), "b": rec("b", 0.91, 4.0), "c": rec("c", 0.5, 1.0)}
    assert verdict(some, 0.9)[2] == "a and b meet the 90% target; c does not."


def test_without_dopd_the_leader_is_compared_with_the_runner_up() -> None:
    records = {"static:4:4": rec("static:4:4", 0.8, 6.0), "colocated": rec("colocated", 0.9, 8.0),
               "reactive": rec("reactive", 0.7, 5.0)}
    lines = verdict(records, 0.9)
    assert lines[0] == ("Verdict: colocated wins. Goodput 8.00 req/s against 6.00 for "
                        "static:4:4, the runner-up (1.33x).")


def test_latencies_that_are_not_numbers_are_left_out() -> None:
    records = {"colocated": rec("colocated", 0.2, 1.0, ttft="miss", tpot=None),
               "dopd": rec("dopd", 0.95, 5.0, ttft=0.4, tpot=0.05)}
    lines = verdict(records, 0.9)
    assert not any("P90" in line for line in lines)
    records["colocated"]["tpot_p90"] = 0.1
    assert any(line == "P90 TPOT: dopd 50 ms, colocated 100 ms." for line in verdict(records, 0.9))


def test_max_goodput_line_and_degenerate_inputs() -> None:
    records = {"colocated": rec("colocated", 0.6, 7.0, max_goodput_rps=7.21),
               "dopd": rec("dopd", 0.92, 11.6, max_goodput_rps=13.93)}
    assert verdict(records, 0.9)[-1] == ("Max goodput at the attainment target: dopd 13.93 "
                                         "req/s, colocated 7.21 (1.93x).")
    assert verdict({"dopd": rec("dopd", 0.9, 1.0)}, 0.9) == ()
    zero = {"colocated": rec("colocated", 0.0, 0.0), "dopd": rec("dopd", 0.0, 0.0)}
    assert verdict(zero, 0.9)[0] == ("Verdict: no policy met its SLOs on any request (dopd, "
                                     "colocated).")
    assert standings({"x": {"policy": None, "requests": 0}})[0].rejected_share == 0.0
