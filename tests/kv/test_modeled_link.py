"""Processor-sharing KV links: exact finish times as transfers come and go."""

from __future__ import annotations

import pytest

from dopd.errors import DopdError
from dopd.kv.modeled_link import TransferNetwork


def drain(net: TransferNetwork, source: int, nxt: tuple[float, int] | None
          ) -> dict[int, float]:
    done: dict[int, float] = {}
    while nxt is not None:
        res = net.complete(nxt[0], source, nxt[1])
        assert res is not None
        ids, nxt_new = res
        for rid in ids:
            done[rid] = nxt[0]
        nxt = nxt_new
    return done


def test_single_transfer_takes_bytes_over_bandwidth() -> None:
    net = TransferNetwork(0.001, 100.0)
    nxt = net.start(0.0, 7, 1, 50.0)
    assert nxt is not None and nxt[0] == pytest.approx(0.5)
    assert drain(net, 7, nxt) == {1: pytest.approx(0.5)}
    assert net.in_flight(7) == 0


def test_concurrent_transfers_share_the_link() -> None:
    net = TransferNetwork(0.0, 100.0)
    net.start(0.0, 0, 1, 100.0)  # alone: would end at 1.0
    nxt = net.start(0.5, 0, 2, 100.0)  # from 0.5 both get 50 B/s
    # 1 has 50 B left -> ends at 1.5; then 2 (50 B left) alone at 100 B/s -> 2.0
    assert nxt is not None and nxt[0] == pytest.approx(1.5)
    done = drain(net, 0, nxt)
    assert done == {1: pytest.approx(1.5), 2: pytest.approx(2.0)}


def test_stale_events_are_ignored_and_links_are_independent() -> None:
    net = TransferNetwork(0.0, 10.0)
    first = net.start(0.0, 0, 1, 10.0)
    second = net.start(0.0, 0, 2, 10.0)
    other = net.start(0.0, 1, 3, 10.0)
    assert first is not None and second is not None and other is not None
    assert net.complete(first[0], 0, first[1]) is None  # superseded
    assert second[0] == pytest.approx(2.0) and other[0] == pytest.approx(1.0)
    assert drain(net, 0, second) == {1: pytest.approx(2.0), 2: pytest.approx(2.0)}


def test_bad_link_parameters_are_rejected() -> None:
    with pytest.raises(DopdError):
        TransferNetwork(0.0, 0.0)
    with pytest.raises(DopdError):
        TransferNetwork(-1.0, 1.0)
