"""Load signals measured at arrival, over a sliding time window, and per-instance signal records.

Demand is measured when requests arrive, not when they complete: a planner that counts
completions sees a backlog only after it has already hurt TTFT. Output lengths are the exception:
they are known only when a request finishes, so they are learned from recently finished requests.

Everything here is clock-agnostic: times are plain floats in seconds on whatever clock the caller
runs (virtual time in the simulator, ``time.monotonic()`` live). The clock must not go backwards.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from dopd.errors import DopdError, require
from dopd.types import InstanceState, Role

#: Upper edges of the default input-length histogram bins (tokens); the last bin is open.
DEFAULT_HIST_EDGES: tuple[float, ...] = (
    256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0, math.inf,
)


def _as_tokens(value: object, what: str) -> int:
    """``value`` as a non-negative int; raises DopdError for fractional, negative or bad values."""
    try:
        as_int = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        raise DopdError(f"{what} must be a non-negative integer, got {value!r}") from None
    message = f"{what} must be a non-negative integer, got {value!r}"
    require(as_int == value and as_int >= 0, message)
    return as_int


def _moments(count: int, total: int, total_sq: int) -> tuple[float, float, float]:
    """(mean, second moment, CV) from exact integer sums; NaN when ``count`` is 0."""
    if count == 0:
        return math.nan, math.nan, math.nan
    mean = total / count
    m2 = total_sq / count
    var = (count * total_sq - total * total) / (count * count)  # exact in ints, >= 0
    cv = math.sqrt(var) / mean if mean > 0 else 0.0
    return mean, m2, cv


class _TokenWindow:
    """Timestamped token counts in a sliding window with exact integer running sums."""

    __slots__ = ("_items", "count", "total", "total_sq")

    def __init__(self) -> None:
        self._items: deque[tuple[float, int]] = deque()
        self.count = 0
        self.total = 0
        self.total_sq = 0

    def push(self, t: float, n: int) -> None:
        self._items.append((t, n))
        self.count += 1
        self.total += n
        self.total_sq += n * n

    def evict(self, cutoff: float) -> list[int]:
        """Drop items with time <= ``cutoff``; returns the dropped values."""
        dropped: list[int] = []
        items = self._items
        while items and items[0][0] <= cutoff:
            _, n = items.popleft()
            self.count -= 1
            self.total -= n
            self.total_sq -= n * n
            dropped.append(n)
        return dropped

    def values(self) -> npt.NDArray[np.int64]:
        return np.fromiter((n for _, n in self._items), dtype=np.int64, count=len(self._items))


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Arrival-side signals over the window ending at ``window_end_s``.

    ``window_start_s`` is max(end - window, monitor start); ``rate_rps`` is
    ``count / (window_end_s - window_start_s)`` (0 when the span is 0). Input
    statistics are over the prompts that arrived in the window; output statistics over the
    requests that finished in the (possibly longer) output window. ``m2`` is the raw second
    moment E[n^2]; ``cv`` is the population std / mean. Statistics over an empty set are NaN.
    ``in_hist[i]`` counts prompts with ``in_hist_edges[i-1] < n <= in_hist_edges[i]``.
    """

    window_start_s: float
    window_end_s: float
    count: int
    rate_rps: float
    mean_in: float
    m2_in: float
    cv_in: float
    p50_in: float
    p90_in: float
    in_hist_edges: tuple[float, ...]
    in_hist: tuple[int, ...]
    out_count: int
    mean_out: float
    m2_out: float
    cv_out: float

    @property
    def span_s(self) -> float:
        return self.window_end_s - self.window_start_s


class ArrivalMonitor:
    """Sliding-window arrival rate and length statistics, exact over the window.

    Each observation costs O(1) amortised (a deque append, each item evicted once, exact integer
    running sums; the histogram bin is found by bisection over a handful of edges). A snapshot
    costs O(items in the window) for the exact percentiles, which is cheap at control-tick rate.

    The window at time ``now`` holds the observations with time in (now - window_s, now]; the
    rate divides their count by now - max(now - window_s, start_s). ``start_s`` defaults to the
    time of the first call, so the rate during the first window is not diluted by time before
    the monitor existed. ``output_window_s`` (default ``window_s``) is the window over finished
    requests used for output lengths; it may be longer since completions are sparser.
    """

    def __init__(
        self,
        window_s: float,
        *,
        output_window_s: float | None = None,
        start_s: float | None = None,
        hist_edges: tuple[float, ...] = DEFAULT_HIST_EDGES,
    ) -> None:
        require(math.isfinite(window_s) and window_s > 0, f"window must be > 0 s, got {window_s}")
        out_w = window_s if output_window_s is None else output_window_s
        require(math.isfinite(out_w) and out_w > 0, f"output window must be > 0 s, got {out_w}")
        require(len(hist_edges) >= 1, "histogram needs at least one bin edge")
        require(
            all(a < b for a, b in pairwise(hist_edges)),
            "histogram edges must be strictly increasing",
        )
        require(hist_edges[-1] == math.inf, "the last histogram edge must be inf (open last bin)")
        self.window_s = float(window_s)
        self.output_window_s = float(out_w)
        self.hist_edges = tuple(float(e) for e in hist_edges)
        self._start = start_s
        self._last_t = -math.inf if start_s is None else float(start_s)
        self._inputs = _TokenWindow()
        self._outputs = _TokenWindow()
        self._hist = [0] * len(self.hist_edges)

    def _advance(self, t: float) -> float:
        t = float(t)
        require(math.isfinite(t), f"time must be finite, got {t}")
        require(t >= self._last_t, f"time went backwards: {t} < {self._last_t}")
        if self._start is None:
            self._start = t
        self._last_t = t
        for n in self._inputs.evict(t - self.window_s):
            self._hist[self._bin(n)] -= 1
        self._outputs.evict(t - self.output_window_s)
        return t

    def _bin(self, n: int) -> int:
        # Bins are right-closed: n == edge falls in the bin whose upper edge is ``edge``.
        edges = self.hist_edges
        i = bisect_right(edges, n)
        return i - 1 if i > 0 and edges[i - 1] == n else i

    def observe_arrival(self, t: float, prompt_tokens: int) -> None:
        """Record a request arriving at time ``t`` with ``prompt_tokens`` prompt tokens."""
        n = _as_tokens(prompt_tokens, "prompt tokens")
        t = self._advance(t)
        self._inputs.push(t, n)
        self._hist[self._bin(n)] += 1

    def observe_output(self, t: float, output_tokens: int) -> None:
        """Record a request finishing at time ``t`` after generating ``output_tokens`` tokens."""
        n = _as_tokens(output_tokens, "output tokens")
        t = self._advance(t)
        self._outputs.push(t, n)

    def snapshot(self, now: float) -> WindowStats:
        """Statistics over the window ending at ``now`` (which must not precede any observation)."""
        now = self._advance(now)
        assert self._start is not None
        start = max(now - self.window_s, self._start)
        span = now - start
        inp, out = self._inputs, self._outputs
        mean_in, m2_in, cv_in = _moments(inp.count, inp.total, inp.total_sq)
        mean_out, m2_out, cv_out = _moments(out.count, out.total, out.total_sq)
        if inp.count:
            p50, p90 = (float(q) for q in np.percentile(inp.values(), [50.0, 90.0]))
        else:
            p50 = p90 = math.nan
        return WindowStats(
            window_start_s=start,
            window_end_s=now,
            count=inp.count,
            rate_rps=inp.count / span if span > 0 else 0.0,
            mean_in=mean_in,
            m2_in=m2_in,
            cv_in=cv_in,
            p50_in=p50,
            p90_in=p90,
            in_hist_edges=self.hist_edges,
            in_hist=tuple(self._hist),
            out_count=out.count,
            mean_out=mean_out,
            m2_out=m2_out,
            cv_out=cv_out,
        )


class LatencyWindow:
    """Observed latencies (TTFT or TPOT, seconds) over a sliding window, for ``InstanceSignals``.

    ``observe`` is O(1) amortised; ``quantile`` is O(items in the window) and returns None when
    the window is empty.
    """

    def __init__(self, window_s: float) -> None:
        require(math.isfinite(window_s) and window_s > 0, f"window must be > 0 s, got {window_s}")
        self.window_s = float(window_s)
        self._items: deque[tuple[float, float]] = deque()
        self._last_t = -math.inf

    def _advance(self, t: float) -> None:
        require(math.isfinite(t), f"time must be finite, got {t}")
        require(t >= self._last_t, f"time went backwards: {t} < {self._last_t}")
        self._last_t = t
        cutoff = t - self.window_s
        items = self._items
        while items and items[0][0] <= cutoff:
            items.popleft()

    def observe(self, t: float, latency_s: float) -> None:
        ok = math.isfinite(latency_s) and latency_s >= 0
        require(ok, f"latency must be >= 0 s, got {latency_s}")
        self._advance(float(t))
        self._items.append((float(t), float(latency_s)))

    def quantile(self, now: float, q: float = 0.9) -> float | None:
        require(0.0 <= q <= 1.0, f"quantile must be in [0, 1], got {q}")
        self._advance(float(now))
        if not self._items:
            return None
        values = np.fromiter((v for _, v in self._items), dtype=np.float64, count=len(self._items))
        return float(np.quantile(values, q))


@dataclass(frozen=True, slots=True)
class InstanceSignals:
    """What the control plane sees of one instance at one tick (filled by the sim or live system).

    ``mean_step_time_s`` is the mean duration of recent engine steps (0 when idle); the observed
    P90s are over recently served requests and None when there were none.
    """

    instance_id: int
    role: Role
    state: InstanceState
    queued_prefill_tokens: int
    decode_batch: int
    kv_use_fraction: float
    mean_step_time_s: float
    ttft_p90_s: float | None = None
    tpot_p90_s: float | None = None

    def __post_init__(self) -> None:
        queued, kv = self.queued_prefill_tokens, self.kv_use_fraction
        require(queued >= 0, f"queued prefill tokens must be >= 0, got {queued}")
        require(self.decode_batch >= 0, f"decode batch must be >= 0, got {self.decode_batch}")
        require(0.0 <= kv <= 1.0, f"KV use fraction must be in [0, 1], got {kv}")
        require(
            math.isfinite(self.mean_step_time_s) and self.mean_step_time_s >= 0,
            f"mean step time must be >= 0 s, got {self.mean_step_time_s}",
        )
        for name, value in (("TTFT p90", self.ttft_p90_s), ("TPOT p90", self.tpot_p90_s)):
            ok = value is None or (math.isfinite(value) and value >= 0)
            require(ok, f"{name} must be >= 0 s, got {value}")


class TraceLike(Protocol):
    """What :func:`window_series` reads from a workload (``dopd.workload.Workload`` has it)."""

    @property
    def arrival_s(self) -> npt.NDArray[np.floating]: ...
    @property
    def prompt_tokens(self) -> npt.NDArray[np.integer]: ...
    @property
    def output_tokens(self) -> npt.NDArray[np.integer]: ...


@dataclass(frozen=True, slots=True)
class WindowSeries:
    """Per-window signals of a workload, one entry per complete window (read-only arrays).

    Window ``k`` is [start_s + k*window_s, start_s + (k+1)*window_s); ``t[k]`` is its end, the
    time at which its statistics become known. ``rate`` is arrivals / window_s. Length moments
    are over the requests arriving in the window (outputs included: a trace knows them up front)
    and NaN for an empty window; :meth:`filled` carries the last known value forward instead.
    """

    window_s: float
    t: npt.NDArray[np.float64]
    count: npt.NDArray[np.int64]
    rate: npt.NDArray[np.float64]
    mean_in: npt.NDArray[np.float64]
    m2_in: npt.NDArray[np.float64]
    mean_out: npt.NDArray[np.float64]
    m2_out: npt.NDArray[np.float64]

    SIGNALS = ("rate", "mean_in", "m2_in", "mean_out", "m2_out")

    def __len__(self) -> int:
        return len(self.t)

    def signal(self, name: str) -> npt.NDArray[np.float64]:
        """One of :attr:`SIGNALS` by name."""
        require(name in self.SIGNALS, f"unknown signal {name!r} (known: {', '.join(self.SIGNALS)})")
        return getattr(self, name)  # type: ignore[no-any-return]

    def filled(self) -> WindowSeries:
        """A copy with NaN length moments replaced by the previous window's (leading NaNs stay)."""

        def ffill(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            # Index of the latest finite entry at or before each position (0 before the first).
            idx = np.maximum.accumulate(np.where(np.isfinite(a), np.arange(len(a)), 0))
            return _frozen(a[idx])

        return WindowSeries(
            self.window_s, self.t, self.count, self.rate,
            ffill(self.mean_in), ffill(self.m2_in), ffill(self.mean_out), ffill(self.m2_out),
        )


def _frozen(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    a.setflags(write=False)
    return a


def window_series(
    workload: TraceLike, window_s: float, start_s: float | None = None
) -> WindowSeries:
    """Cut ``workload`` into consecutive windows of ``window_s`` seconds and measure each (numpy).

    Windows start at ``start_s`` (default: the first arrival). Only complete windows are kept: a
    trailing partial window would read as a false drop in rate. Raises DopdError when the
    window is not positive, the arrays are malformed, or the trace spans less than one window.
    """
    require(math.isfinite(window_s) and window_s > 0, f"window must be > 0 s, got {window_s}")
    arrival = np.asarray(workload.arrival_s, dtype=np.float64)
    prompt = np.asarray(workload.prompt_tokens, dtype=np.float64)
    output = np.asarray(workload.output_tokens, dtype=np.float64)
    require(arrival.ndim == 1 and len(arrival) > 0, "trace has no requests")
    require(
        prompt.shape == arrival.shape and output.shape == arrival.shape,
        "trace arrays (arrival, prompt, output) differ in length",
    )
    require(bool(np.isfinite(arrival).all()), "trace has non-finite arrival times")
    require(bool((np.diff(arrival) >= 0).all()), "trace arrival times are not sorted")
    start = float(arrival[0]) if start_s is None else float(start_s)
    first = float(arrival[0])
    require(start <= first, f"series start {start} s is after the first arrival {first} s")
    n_windows = math.floor((float(arrival[-1]) - start) / window_s)
    require(
        n_windows >= 1,
        f"trace spans {float(arrival[-1]) - start:.3g} s, less than one {window_s:g} s window",
    )
    idx = np.floor((arrival - start) / window_s).astype(np.int64)
    keep = idx < n_windows
    idx = idx[keep]
    prompt, output = prompt[keep], output[keep]
    count = np.bincount(idx, minlength=n_windows)

    def moment(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        sums = np.bincount(idx, weights=values, minlength=n_windows)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, sums / np.maximum(count, 1), np.nan)

    return WindowSeries(
        window_s=float(window_s),
        t=_frozen(start + window_s * np.arange(1, n_windows + 1, dtype=np.float64)),
        count=_frozen(count.astype(np.int64)),
        rate=_frozen(count / window_s),
        mean_in=_frozen(moment(prompt)),
        m2_in=_frozen(moment(prompt * prompt)),
        mean_out=_frozen(moment(output)),
        m2_out=_frozen(moment(output * output)),
    )
