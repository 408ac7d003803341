"""The :class:`Workload` value: a sequence of requests as column arrays.

A workload is what the simulator, the live load generator and the benchmarks replay: arrival
times (seconds, ascending, the first at 0) and the prompt and output length of every request.
It is immutable (the arrays are read-only) and every operation is vectorised, so traces with
tens of thousands of requests cost nothing until :meth:`Workload.requests` is iterated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dopd.errors import DopdError, require
from dopd.types import RequestSpec


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _int_column(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind == "f":
        require(bool(np.all(np.isfinite(array))), f"{what} must be finite")
        require(bool(np.all(array == np.round(array))), f"{what} must be whole numbers")
    elif array.dtype.kind not in "iu":
        raise DopdError(f"{what} must be integers, got dtype {array.dtype}")
    return np.array(array, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class LengthMoments:
    """Moments of the prompt (input) and output lengths of a set of requests.

    ``*_m2`` is the raw second moment E[n^2]; ``*_cv`` is the coefficient of variation
    std/mean with the population standard deviation (ddof=0).
    """

    count: int
    prompt_mean: float
    prompt_m2: float
    prompt_cv: float
    output_mean: float
    output_m2: float
    output_cv: float

    @staticmethod
    def of(prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> LengthMoments:
        """Moments of two equal-length, non-empty integer arrays."""
        require(prompt_tokens.size > 0, "length moments need at least one request")
        p = prompt_tokens.astype(np.float64)
        o = output_tokens.astype(np.float64)
        p_mean, o_mean = float(p.mean()), float(o.mean())
        return LengthMoments(
            count=int(p.size),
            prompt_mean=p_mean,
            prompt_m2=float(np.mean(p * p)),
            prompt_cv=float(p.std() / p_mean),
            output_mean=o_mean,
            output_m2=float(np.mean(o * o)),
            output_cv=float(o.std() / o_mean),
        )


@dataclass(frozen=True, eq=False)
class PrefixBlocks:
    """Per-request prefix-block hashes in CSR form (Mooncake ``hash_ids``).

    Request ``i`` owns ``ids[offsets[i]:offsets[i + 1]]``; each id stands for ``block_tokens``
    prompt tokens, and equal leading ids of two requests mean a shareable prefix.
    """

    ids: np.ndarray
    offsets: np.ndarray
    block_tokens: int = 512

    def __post_init__(self) -> None:
        ids = np.array(self.ids, dtype=np.int64)
        offsets = np.array(self.offsets, dtype=np.int64)
        require(offsets.ndim == 1 and offsets.size >= 1, "prefix offsets must be a 1-d array")
        require(offsets[0] == 0 and offsets[-1] == ids.size, "prefix offsets do not cover the ids")
        require(bool(np.all(np.diff(offsets) >= 0)), "prefix offsets must be non-decreasing")
        require(self.block_tokens >= 1, f"block_tokens must be >= 1, got {self.block_tokens}")
        object.__setattr__(self, "ids", _frozen(ids))
        object.__setattr__(self, "offsets", _frozen(offsets))

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    def blocks_of(self, index: int) -> np.ndarray:
        """Block hashes of request ``index`` (a read-only view)."""
        return self.ids[self.offsets[index] : self.offsets[index + 1]]

    def take(self, indices: np.ndarray) -> PrefixBlocks:
        """The blocks of the requests at ``indices``, in that order."""
        counts = np.diff(self.offsets)[indices]
        offsets = np.concatenate(([0], np.cumsum(counts)))
        starts = self.offsets[indices]
        # Flat positions: for every selected request, starts[i] + 0..counts[i]-1.
        owner_start = np.repeat(starts - offsets[:-1], counts)
        positions = owner_start + np.arange(int(offsets[-1]))
        return PrefixBlocks(self.ids[positions], offsets, self.block_tokens)

    def reuse_fraction(self) -> float:
        """Share of all blocks whose hash already appeared in an earlier request (replay order)."""
        if self.ids.size == 0:
            return 0.0
        _, first = np.unique(self.ids, return_index=True)
        return float(1.0 - first.size / self.ids.size)


@dataclass(frozen=True, eq=False)
class Workload:
    """Requests as read-only column arrays, in arrival order.

    Invariants (checked on construction, violations raise :class:`DopdError`): at least one
    request; ``arrival_s`` float64, finite, ascending (ties allowed) and starting at 0;
    ``prompt_tokens`` and ``output_tokens`` int64 and >= 1; all arrays of equal length;
    ``prefix`` (optional) has one entry per request. Use :meth:`from_arrays` to build one from
    unnormalised or unsorted data.
    """

    name: str
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    prefix: PrefixBlocks | None = field(default=None)

    def __post_init__(self) -> None:
        arrival = np.array(self.arrival_s, dtype=np.float64)
        prompt = _int_column(self.prompt_tokens, "prompt_tokens")
        output = _int_column(self.output_tokens, "output_tokens")
        require(arrival.ndim == 1 and arrival.size >= 1, f"workload {self.name!r} has no requests")
        require(
            prompt.shape == arrival.shape and output.shape == arrival.shape,
            f"workload {self.name!r}: arrival, prompt and output arrays differ in length",
        )
        require(bool(np.all(np.isfinite(arrival))), f"workload {self.name!r}: non-finite arrival")
        require(arrival[0] == 0.0, f"workload {self.name!r}: first arrival must be 0")
        require(bool(np.all(np.diff(arrival) >= 0)), f"workload {self.name!r}: arrivals unsorted")
        require(int(prompt.min()) >= 1, f"workload {self.name!r}: prompt_tokens must be >= 1")
        require(int(output.min()) >= 1, f"workload {self.name!r}: output_tokens must be >= 1")
        if self.prefix is not None:
            require(len(self.prefix) == arrival.size, "prefix blocks must match the request count")
        object.__setattr__(self, "arrival_s", _frozen(arrival))
        object.__setattr__(self, "prompt_tokens", _frozen(prompt))
        object.__setattr__(self, "output_tokens", _frozen(output))

    @classmethod
    def from_arrays(
        cls,
        name: str,
        arrival_s: Any,
        prompt_tokens: Any,
        output_tokens: Any,
        prefix: PrefixBlocks | None = None,
    ) -> Workload:
        """Build a workload from raw columns: stable-sorts by arrival and shifts the first to 0."""
        arrival = np.asarray(arrival_s, dtype=np.float64)
        require(arrival.ndim == 1 and arrival.size >= 1, f"workload {name!r} has no requests")
        require(bool(np.all(np.isfinite(arrival))), f"workload {name!r}: non-finite arrival")
        prompt = np.asarray(prompt_tokens)
        output = np.asarray(output_tokens)
        require(
            prompt.shape == arrival.shape and output.shape == arrival.shape,
            f"workload {name!r}: arrival, prompt and output arrays differ in length",
        )
        if np.any(np.diff(arrival) < 0):
            order = np.argsort(arrival, kind="stable")
            arrival, prompt, output = arrival[order], prompt[order], output[order]
            prefix = prefix.take(order) if prefix is not None else None
        return cls(name, arrival - arrival[0], prompt, output, prefix)

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def duration_s(self) -> float:
        """Arrival span: last arrival minus first arrival (0 for a single request)."""
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def rate_rps(self) -> float:
        """Mean arrival rate (n - 1) / span: the inverse of the mean inter-arrival gap.

        0.0 for a single request; ``inf`` when several requests arrive at the same instant.
        """
        n = len(self)
        if n < 2:
            return 0.0
        span = self.duration_s
        return (n - 1) / span if span > 0 else math.inf

    def interarrival_cv(self) -> float:
        """Coefficient of variation of the inter-arrival gaps (1 for Poisson); 0 if undefined."""
        gaps = np.diff(self.arrival_s)
        if gaps.size == 0 or gaps.mean() == 0:
            return 0.0
        return float(gaps.std() / gaps.mean())

    def requests(self) -> Iterator[RequestSpec]:
        """Yield one :class:`RequestSpec` per request, ids 0..n-1 in arrival order."""
        columns = zip(
            self.arrival_s.tolist(),
            self.prompt_tokens.tolist(),
            self.output_tokens.tolist(),
            strict=True,
        )
        for request_id, (arrival, prompt, output) in enumerate(columns):
            yield RequestSpec(request_id, arrival, prompt, output)

    def scale_rate(self, k: float) -> Workload:
        """The same requests at ``k`` times the rate: every arrival time is divided by ``k``."""
        require(
            isinstance(k, (int, float)) and math.isfinite(k) and k > 0,
            f"rate scale must be a finite number > 0, got {k!r}",
        )
        return Workload(
            f"{self.name}x{k:g}", self.arrival_s / k, self.prompt_tokens, self.output_tokens,
            self.prefix,
        )

    def cut(
        self,
        duration_s: float | None = None,
        max_requests: int | None = None,
        start_s: float = 0.0,
    ) -> Workload:
        """The requests arriving in ``[start_s, start_s + duration_s)``, at most the first
        ``max_requests`` of them, re-normalised so the first kept arrival is at 0.

        ``None`` means no limit. Raises :class:`DopdError` on negative limits or when nothing
        is left.
        """
        require(start_s >= 0 and math.isfinite(start_s), f"cut start must be >= 0, got {start_s}")
        require(duration_s is None or duration_s > 0, f"cut duration must be > 0, got {duration_s}")
        require(
            max_requests is None or max_requests >= 1,
            f"cut max_requests must be >= 1, got {max_requests}",
        )
        lo = int(np.searchsorted(self.arrival_s, start_s, side="left"))
        hi = len(self)
        if duration_s is not None:
            hi = int(np.searchsorted(self.arrival_s, start_s + duration_s, side="left"))
        if max_requests is not None:
            hi = min(hi, lo + max_requests)
        require(hi > lo, f"cut of workload {self.name!r} leaves no requests")
        keep = np.arange(lo, hi)
        prefix = self.prefix.take(keep) if self.prefix is not None else None
        arrival = self.arrival_s[lo:hi]
        return Workload(
            f"{self.name}[{lo}:{hi}]", arrival - arrival[0], self.prompt_tokens[lo:hi],
            self.output_tokens[lo:hi], prefix,
        )

    def length_moments(self) -> LengthMoments:
        """Means, raw second moments and CVs of the prompt and output lengths."""
        return LengthMoments.of(self.prompt_tokens, self.output_tokens)

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts: size, span, rate, burstiness and length percentiles."""
        out: dict[str, Any] = {
            "name": self.name,
            "requests": len(self),
            "duration_s": self.duration_s,
            "rate_rps": self.rate_rps,
            "interarrival_cv": self.interarrival_cv(),
        }
        for label, column in (("prompt", self.prompt_tokens), ("output", self.output_tokens)):
            p50, p90, p99 = np.percentile(column, [50, 90, 99]).tolist()
            out[f"{label}_mean"] = float(column.mean())
            out[f"{label}_p50"] = p50
            out[f"{label}_p90"] = p90
            out[f"{label}_p99"] = p99
            out[f"{label}_max"] = int(column.max())
        moments = self.length_moments()
        out["prompt_cv"] = moments.prompt_cv
        out["output_cv"] = moments.output_cv
        if self.prefix is not None:
            out["prefix_reuse_fraction"] = self.prefix.reuse_fraction()
        return out


@dataclass(frozen=True, eq=False)
class LengthTable:
    """Observed (prompt, output) length pairs without arrival times (e.g. the ShareGPT table)."""

    name: str
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

    def __post_init__(self) -> None:
        prompt = _int_column(self.prompt_tokens, "prompt_tokens")
        output = _int_column(self.output_tokens, "output_tokens")
        require(prompt.ndim == 1 and prompt.size >= 1, f"length table {self.name!r} is empty")
        require(prompt.shape == output.shape, f"length table {self.name!r}: columns differ in size")
        require(int(prompt.min()) >= 1 and int(output.min()) >= 1, "lengths must be >= 1")
        object.__setattr__(self, "prompt_tokens", _frozen(prompt))
        object.__setattr__(self, "output_tokens", _frozen(output))

    def __len__(self) -> int:
        return int(self.prompt_tokens.size)

    def length_moments(self) -> LengthMoments:
        return LengthMoments.of(self.prompt_tokens, self.output_tokens)
