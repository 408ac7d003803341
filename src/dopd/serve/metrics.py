"""Prometheus metrics of one front end (own registry per app, so apps never share state).

Counters and histograms are updated by the dispatcher's observer hooks and the HTTP layer;
per-instance gauges (queue depths, running requests, instances per role) are refreshed from the
workers' latest stats at every scrape (:meth:`ServeMetrics.render`).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dopd.serve.cluster import InstanceHandle
from dopd.serve.in_flight import Observer, Tracked
from dopd.types import InstanceState, RequestOutcome, RequestState, Role

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)
_TPOT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class FrontendTimes:
    """Per-request front-end latencies of streamed requests, kept exactly (the last
    ``capacity``): the request at the app to the submit sent to a worker, and the first token's
    event from the worker to its SSE chunk written. Appending costs a few tens of nanoseconds."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=capacity)

    def record(self, to_submit_s: float, to_write_s: float) -> None:
        self.samples.append((to_submit_s, to_write_s))

    def reset(self) -> None:
        self.samples.clear()

    def summary(self) -> dict[str, Any]:
        """Count and exact P50/P90/P99/max in milliseconds of each part and of their sum."""
        a = np.array(self.samples, dtype=float).reshape(-1, 2) * 1000.0
        parts = {"arrival_to_submit_ms": a[:, 0], "event_to_write_ms": a[:, 1],
                 "front_end_ms": a[:, 0] + a[:, 1]}
        out: dict[str, Any] = {"requests": len(a)}
        for name, v in parts.items():
            out[name] = ({f"p{q}": float(np.percentile(v, q)) for q in (50, 90, 99)}
                         | {"max": float(v.max())} if len(v) else {})
        return out


class ServeMetrics(Observer):
    """The metric families (names prefixed ``dopd_``) and their update hooks."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.frontend = FrontendTimes()
        self.requests = Counter("dopd_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.outcomes = Counter("dopd_request_outcomes", "Requests by final state and path",
                                ["state", "path"], registry=r)
        self.ttft = Histogram("dopd_ttft_seconds", "Time to first token", registry=r,
                              buckets=_LATENCY_BUCKETS)
        self.tpot = Histogram("dopd_tpot_seconds", "Time per output token after the first",
                              registry=r, buckets=_TPOT_BUCKETS)
        self.e2e = Histogram("dopd_e2e_seconds", "End-to-end request latency", registry=r,
                             buckets=_LATENCY_BUCKETS)
        self.router = Histogram("dopd_router_seconds", "Front-end time from HTTP arrival to "
                                "the submit sent to a worker", registry=r,
                                buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01,
                                         0.05))
        self.kv_bytes = Counter("dopd_kv_bytes_moved", "KV bytes moved between instances",
                                registry=r)
        self.kv_transfers = Counter("dopd_kv_transfers", "KV transfers by result", ["result"],
                                    registry=r)
        self.transfer_failures = Counter("dopd_kv_transfer_failures", "KV transfers that failed "
                                         "or timed out (the prompt was recomputed)", registry=r)
        self.role_switches = Counter("dopd_role_switches", "Completed role switches",
                                     registry=r)
        self.crashes = Counter("dopd_worker_crashes", "Worker processes that died", registry=r)
        self.retried = Counter("dopd_requests_retried", "Requests placed again after a crash",
                               registry=r)
        self.in_flight = Gauge("dopd_requests_in_flight", "Requests being served", registry=r)
        self.queue_depth = Gauge("dopd_queue_depth", "Requests waiting for prefill per instance",
                                 ["instance"], registry=r)
        self.running = Gauge("dopd_running_requests", "Requests decoding per instance",
                             ["instance"], registry=r)
        self.queued_tokens = Gauge("dopd_queued_prefill_tokens", "Prompt tokens waiting per "
                                   "instance", ["instance"], registry=r)
        self.instances = Gauge("dopd_instances", "Active instances per role", ["role"],
                               registry=r)
        self.states = Gauge("dopd_instance_states", "Instances per state", ["state"],
                            registry=r)
        self._children: dict[tuple[str, ...], Any] = {}

    def count_request(self, endpoint: str, status: int) -> None:
        """One HTTP request to ``endpoint`` answered with ``status``."""
        key = ("requests", endpoint, str(status))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(endpoint, key[2])
        child.inc()

    # ------------------------------------------------------------------ observer hooks
    def on_arrival(self, t: Tracked) -> None:
        self.in_flight.inc()

    def on_done(self, t: Tracked, outcome: RequestOutcome) -> None:
        self.in_flight.dec()
        path = "disaggregated" if t.prefill_iid is not None else "colocated"
        key = ("outcomes", outcome.state.name, path)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.outcomes.labels(outcome.state.name.lower(), path)
        child.inc()
        if outcome.state != RequestState.FINISHED:
            return
        if outcome.ttft_s is not None:
            self.ttft.observe(outcome.ttft_s)
        if outcome.tpot_s is not None:
            self.tpot.observe(outcome.tpot_s)
        if outcome.e2e_s is not None:
            self.e2e.observe(outcome.e2e_s)

    def on_kv(self, ok: bool, nbytes: int) -> None:
        self.kv_transfers.labels("ok" if ok else "failed").inc()
        if ok:
            self.kv_bytes.inc(nbytes)
        else:
            self.transfer_failures.inc()

    def on_crash(self, iid: int, retried: int, failed: int) -> None:
        self.crashes.inc()
        self.retried.inc(retried)

    # ------------------------------------------------------------------ scrape
    def refresh(self, instances: Iterable[InstanceHandle]) -> None:
        roles: Tally[str] = Tally()
        states: Tally[str] = Tally()
        for h in instances:
            label = str(h.instance_id)
            s = h.stats
            self.queue_depth.labels(label).set(s.waiting + s.prefilling)
            self.running.labels(label).set(s.decode_batch)
            self.queued_tokens.labels(label).set(s.queued_prefill_tokens)
            states[str(h.state)] += 1
            if h.state == InstanceState.ACTIVE:
                roles[str(h.role)] += 1
        for role in Role:
            self.instances.labels(str(role)).set(roles[str(role)])
        for state in InstanceState:
            self.states.labels(str(state)).set(states[str(state)])

    def render(self, instances: Iterable[InstanceHandle]) -> bytes:
        self.refresh(instances)
        return generate_latest(self.registry)
