"""The worker's bounded buffer of observed steps and its wire form."""

from __future__ import annotations

import pytest

from dopd.errors import DopdError
from dopd.serve.step_samples import (
    MAX_PER_MESSAGE,
    WIRE_VERSION,
    StepBuffer,
    StepSample,
    samples_from_wire,
)
from dopd.serve.wire import pack, unpack


def _sample(i: int) -> StepSample:
    return StepSample(i, i * i, 1 if i % 2 else 0, 3, 100 + i, 0.001 * (i + 1))


def test_round_trip_through_msgpack_keeps_every_field() -> None:
    buf = StepBuffer()
    sent = [_sample(i) for i in range(5)]
    for s in sent:
        buf.record(s)
    wire = buf.drain()
    assert wire is not None and wire["v"] == WIRE_VERSION
    samples, dropped = samples_from_wire(unpack(pack(wire)))
    assert samples == sent and dropped == 0
    assert [s.kind for s in samples] == ["decode", "prefill", "decode", "prefill", "decode"]
    assert len(buf) == 0 and buf.drain() is None


def test_buffer_is_bounded_and_counts_what_it_drops() -> None:
    buf = StepBuffer(capacity=10)
    for i in range(25):
        buf.record(_sample(i))
    assert len(buf) == 10
    wire = buf.drain()
    assert wire is not None
    samples, dropped = samples_from_wire(wire)
    assert dropped == 15
    assert samples == [_sample(i) for i in range(15, 25)]  # the newest are kept, in order
    assert buf.drain() is None  # drops are reported once


def test_one_message_carries_at_most_the_limit() -> None:
    buf = StepBuffer()
    for i in range(MAX_PER_MESSAGE * 2 + 3):
        buf.record(_sample(i))
    sizes = []
    while (wire := buf.drain()) is not None:
        sizes.append(len(wire["rows"]))
    assert sizes == [MAX_PER_MESSAGE, MAX_PER_MESSAGE, 3]


@pytest.mark.parametrize("bad", [
    None, [], {"v": WIRE_VERSION + 1, "rows": [], "dropped": 0},
    {"v": WIRE_VERSION, "rows": [[1, 2, 3]], "dropped": 0},
    {"v": WIRE_VERSION, "rows": [[1, 2, 3, 4, -5, 0.1]], "dropped": 0},
    {"v": WIRE_VERSION, "rows": [[1, 2, 3, 4, 5, float("nan")]], "dropped": 0},
    {"v": WIRE_VERSION, "rows": [], "dropped": -1},
])
def test_malformed_reports_are_refused(bad: object) -> None:
    with pytest.raises(DopdError):
        samples_from_wire(bad)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(DopdError):
        StepBuffer(capacity=0)
