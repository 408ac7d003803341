"""End to end on two Ray actors with KV through the Ray object store, by the local backend's
own disaggregation tests (``tests/serve/test_e2e_disagg.py``: the ``openai`` client's greedy
output equal to the colocated path's, so the KV arrived intact; streaming chat; the recompute
fallback on a KV timeout), plus: the two instances are separate actor processes."""

from __future__ import annotations

import os

import pytest
from local_checks import e2e_disagg

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

reference = e2e_disagg.reference
disagg = e2e_disagg.disagg
test_disaggregated_greedy_equals_colocated = e2e_disagg.test_disaggregated_greedy_equals_colocated
test_streamed_chat_through_disaggregation = e2e_disagg.test_streamed_chat_through_disaggregation
test_kv_timeout_falls_back_to_recompute = e2e_disagg.test_kv_timeout_falls_back_to_recompute


@pytest.fixture(scope="module")
def server_factory(server_factory):  # type: ignore[no-untyped-def]
    """Ray servers whose KV moves through the object store."""
    return lambda *args: server_factory("--kv-transport", "object_store", *args)


def test_instances_are_separate_actors(disagg) -> None:  # type: ignore[no-untyped-def]
    prefill, decode = disagg.get("/v1/cluster").json()["instances"]
    pids = {prefill["pid"], decode["pid"]}
    assert len(pids) == 2 and disagg.proc.pid not in pids
    for pid in pids:
        os.kill(pid, 0)  # alive
    assert prefill["stats"]["kv_exports"] >= 1 and decode["stats"]["kv_imports"] >= 1
