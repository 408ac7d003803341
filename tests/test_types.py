import pytest

from dopd.errors import DopdError
from dopd.types import SLO, RequestOutcome, RequestState


def test_request_state_is_ordered_and_terminal() -> None:
    assert RequestState.WAITING < RequestState.PREFILLING < RequestState.DECODING
    assert not RequestState.DECODING.is_terminal
    assert RequestState.FINISHED.is_terminal and RequestState.REJECTED.is_terminal


def test_outcome_latencies_follow_the_metric_definitions() -> None:
    outcome = RequestOutcome(
        request_id=1,
        arrival_s=1.0,
        prompt_tokens=10,
        output_tokens=5,
        state=RequestState.FINISHED,
        first_token_s=1.5,
        finish_s=2.5,
    )
    assert outcome.ttft_s == pytest.approx(0.5)
    assert outcome.tpot_s == pytest.approx(0.25)
    assert outcome.e2e_s == pytest.approx(1.5)


def test_one_token_output_has_no_tpot() -> None:
    outcome = RequestOutcome(1, 0.0, 10, 1, RequestState.FINISHED, 0.2, 0.2)
    assert outcome.tpot_s is None
    rejected = RequestOutcome(2, 0.0, 10, 4, RequestState.REJECTED, reason="overload")
    assert rejected.ttft_s is None and rejected.e2e_s is None


@pytest.mark.parametrize(("ttft", "tpot", "att"), [(0, 0.1, 0.9), (1, -1, 0.9), (1, 0.1, 1.5)])
def test_slo_rejects_bad_values(ttft: float, tpot: float, att: float) -> None:
    with pytest.raises(DopdError):
        SLO(ttft, tpot, att)
