"""SLO metrics on hand-computed cases and consistency with RequestOutcome."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from dopd.bench import request_latencies, summarize, summarize_arrays, summarize_result
from dopd.errors import DopdError
from dopd.types import SLO, RequestOutcome, RequestState

S = RequestState
SLO_1 = SLO(ttft_s=1.0, tpot_s=0.25)


def hand_case() -> list[RequestOutcome]:
    return [
        RequestOutcome(0, 0.0, 10, 9, S.FINISHED, 0.5, 2.5),  # TTFT .5, TPOT .25 (= SLO): met
        RequestOutcome(1, 1.0, 10, 9, S.FINISHED, 3.0, 5.0),  # TTFT 2: miss
        RequestOutcome(2, 2.0, 10, 1, S.FINISHED, 2.25, 2.25),  # 1 token, TTFT .25: met
        RequestOutcome(3, 3.0, 10, 9, S.FINISHED, 3.125, 7.125),  # TPOT .5: miss
        RequestOutcome(4, 4.0, 10, 9, S.REJECTED, reason="overload"),
        RequestOutcome(5, 5.0, 10, 9, S.ABORTED, 5.5, None, reason="kv"),  # TTFT .5 counts
    ]


def test_hand_computed_summary() -> None:
    s = summarize(hand_case(), SLO_1)
    counts = (s.requests, s.finished, s.rejected, s.aborted, s.unfinished, s.met)
    assert counts == (6, 4, 1, 1, 0, 2)
    assert s.attainment == pytest.approx(2 / 6)
    assert s.duration_s == 5.0 and s.goodput_rps == pytest.approx(2 / 5)
    # Honest TTFT: .125 .25 .5 .5 2.0 inf (the rejected request); P90 sits at index 4.5
    assert (s.ttft_p50, s.ttft_p90, s.ttft_p99) == (0.5, math.inf, math.inf)
    # served only: .125 .25 .5 .5 2.0 (linear interpolation between order statistics)
    served = (s.ttft_p50_served, s.ttft_p90_served, s.ttft_p99_served)
    assert served == pytest.approx((0.5, 1.4, 1.94))
    assert s.mean_ttft == pytest.approx(3.375 / 5)
    # Honest TPOT: .25 .25 .5 inf (the aborted request got its first token; the rejected one
    # and the one-token output are not in the population)
    assert (s.tpot_p50, s.tpot_p90, s.tpot_p99) == pytest.approx((0.375, math.inf, math.inf))
    served = (s.tpot_p50_served, s.tpot_p90_served, s.tpot_p99_served)
    assert served == pytest.approx((0.25, 0.45, 0.495))
    assert s.mean_tpot == pytest.approx(1 / 3)
    # Honest E2E: .25 2.5 4.0 4.125 inf inf
    assert (s.e2e_p50, s.e2e_p90, s.e2e_p99) == pytest.approx((4.0625, math.inf, math.inf))
    served = (s.e2e_p50_served, s.e2e_p90_served, s.e2e_p99_served)
    assert served == pytest.approx((3.25, 4.0875, 4.12125))
    assert s.mean_e2e == pytest.approx(10.875 / 4)
    shares = (s.rejected_share, s.ttft_unreached_share, s.tpot_unreached_share,
              s.e2e_unreached_share)
    assert shares == pytest.approx((1 / 6, 1 / 6, 1 / 4, 2 / 6))
    d = s.to_dict()
    assert d["goodput_rps"] == s.goodput_rps and d["ttft_slo_s"] == 1.0 and len(d) == 36


def test_explicit_duration_and_zero_span_rule() -> None:
    assert summarize(hand_case(), SLO_1, duration_s=10.0).goodput_rps == pytest.approx(0.2)
    one = [RequestOutcome(0, 3.0, 5, 5, S.FINISHED, 3.5, 4.0)]
    s = summarize(one, SLO(1.0, 1.0))
    assert s.duration_s == 1.0 and s.goodput_rps == 1.0  # span 0 -> makespan
    assert summarize(one, SLO(1.0, 1.0), duration_s=0.0).goodput_rps == 1.0
    rejected = [RequestOutcome(0, 0.0, 5, 5, S.REJECTED)]
    s = summarize(rejected, SLO_1)
    assert s.goodput_rps == 0.0 and s.attainment == 0.0 and s.duration_s == 0.0
    assert s.ttft_p50 == math.inf and s.e2e_p99 == math.inf  # every percentile a miss
    assert s.tpot_p50 is None and s.ttft_p50_served is None and s.mean_tpot is None
    with pytest.raises(DopdError, match="duration"):
        summarize(hand_case(), SLO_1, duration_s=-1.0)


def test_unfinished_requests_are_misses() -> None:
    outcomes = [
        RequestOutcome(0, 0.0, 5, 3, S.FINISHED, 0.1, 0.3),
        RequestOutcome(1, 1.0, 5, 3, S.DECODING, 1.1, None),
        RequestOutcome(2, 2.0, 5, 3, S.WAITING),
    ]
    s = summarize(outcomes, SLO_1)
    assert s.unfinished == 2 and s.met == 1 and s.attainment == pytest.approx(1 / 3)
    assert s.ttft_p50 == pytest.approx(0.1)  # TTFT .1 .1 inf: the middle one is finite
    assert s.ttft_p90 == math.inf and s.ttft_p90_served == pytest.approx(0.1)
    assert s.tpot_p50 == math.inf and s.tpot_p50_served == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        (RequestOutcome(0, 0.0, 5, 3, S.FINISHED, None, 2.0), "FINISHED without"),
        (RequestOutcome(0, 1.0, 5, 3, S.FINISHED, 0.5, 2.0), "out of order"),
        (RequestOutcome(0, 0.0, 5, 3, S.FINISHED, 1.5, 1.0), "out of order"),
        (RequestOutcome(0, 0.0, 5, 0, S.FINISHED, 1.0, 1.0), "output_tokens"),
    ],
)
def test_inconsistent_outcomes_raise(outcome: RequestOutcome, message: str) -> None:
    with pytest.raises(DopdError, match=message):
        summarize([outcome], SLO_1)


def test_bad_arrays_raise() -> None:
    with pytest.raises(DopdError, match="without requests"):
        summarize([], SLO_1)
    with pytest.raises(DopdError, match="expected 2"):
        summarize_arrays(arrival_s=[0.0, 1.0], first_token_s=[0.1], finish_s=[0.2, 1.2],
                         output_tokens=[1, 1], state=[4, 4], slo=SLO_1)
    with pytest.raises(DopdError, match="unknown request state"):
        summarize_arrays(arrival_s=[0.0], first_token_s=[0.1], finish_s=[0.2],
                         output_tokens=[1], state=[42], slo=SLO_1)


def random_outcomes(n: int, seed: int) -> list[RequestOutcome]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        arrival = float(rng.uniform(0, 100))
        tokens = int(rng.integers(1, 6))
        state = S(int(rng.choice([4, 4, 4, 5, 6, 3])))
        started = state in (S.FINISHED, S.ABORTED, S.DECODING)
        first = arrival + float(rng.exponential(1.0)) if started else None
        finish = first + float(rng.exponential(0.1)) * (tokens - 1) if state == S.FINISHED else None
        out.append(RequestOutcome(i, arrival, 5, tokens, state, first, finish))
    return out


def test_arrays_agree_with_request_outcome_properties() -> None:
    outcomes = random_outcomes(500, 11)
    slo = SLO(1.0, 0.1)
    lat = request_latencies(
        arrival_s=[o.arrival_s for o in outcomes],
        first_token_s=[math.nan if o.first_token_s is None else o.first_token_s for o in outcomes],
        finish_s=[math.nan if o.finish_s is None else o.finish_s for o in outcomes],
        output_tokens=[o.output_tokens for o in outcomes],
        state=[int(o.state) for o in outcomes], slo=slo,
    )
    for o, ttft, tpot, e2e, met in zip(outcomes, lat.ttft_s, lat.tpot_s, lat.e2e_s, lat.met,
                                       strict=True):
        for ours, theirs in ((ttft, o.ttft_s), (tpot, o.tpot_s), (e2e, o.e2e_s)):
            assert (math.isnan(ours) and theirs is None) or ours == pytest.approx(theirs)
        expected = (o.state == S.FINISHED and o.ttft_s <= slo.ttft_s
                    and (o.tpot_s is None or o.tpot_s <= slo.tpot_s))
        assert bool(met) == expected


def test_summarize_result_on_large_columns() -> None:
    n = 77_000
    rng = np.random.default_rng(0)
    arrival = np.sort(rng.uniform(0, 3600, n))
    first = arrival + rng.exponential(0.5, n)
    output = rng.integers(1, 500, n)
    finish = first + rng.exponential(0.03, n) * (output - 1)
    state = np.full(n, int(S.FINISHED))
    state[::100] = int(S.REJECTED)
    first[::100] = np.nan
    finish[::100] = np.nan
    result = SimpleNamespace(arrival_s=arrival, first_token_s=first, finish_s=finish,
                             output_tokens=output, state=state)
    s = summarize_result(result, SLO(1.0, 0.05))
    assert s.requests == n and s.rejected == 770
    tpot = (finish - first) / np.maximum(output - 1, 1)
    met = (first - arrival <= 1.0) & ((output == 1) | (tpot <= 0.05))
    assert s.met == int(np.sum(met & (state == int(S.FINISHED))))
    assert s.goodput_rps == pytest.approx(s.met / (arrival[-1] - arrival[0]))
