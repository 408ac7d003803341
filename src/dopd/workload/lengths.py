"""Length samplers: where the (prompt, output) token lengths of synthetic requests come from.

A sampler draws ``n`` pairs at once with a numpy ``Generator``; the arrival time of each request
is passed along so that a sampler may change its mix over time (:class:`MixShift`). All draws
are int64 arrays with every value >= 1. The registry :data:`LENGTHS` maps spec names to
factories for :func:`dopd.workload.spec.parse_lengths`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from dopd.errors import DopdError, require
from dopd.registry import Registry
from dopd.workload.base import LengthTable
from dopd.workload.traces import load_lengths

Pairs = tuple[np.ndarray, np.ndarray]


class LengthSampler(ABC):
    """Draws (prompt_tokens, output_tokens) pairs, both int64 arrays of length ``n``, >= 1."""

    def sample(
        self, rng: np.random.Generator, n: int, times_s: np.ndarray | None = None
    ) -> Pairs:
        """Draw ``n`` pairs; ``times_s`` (length ``n``) are the requests' arrival times."""
        require(n >= 0, f"number of samples must be >= 0, got {n}")
        if times_s is not None:
            times_s = np.asarray(times_s, dtype=np.float64)
            require(times_s.shape == (n,), f"times_s must have {n} entries, got {times_s.shape}")
        prompt, output = self._draw(rng, n, times_s)
        return prompt.astype(np.int64, copy=False), output.astype(np.int64, copy=False)

    @abstractmethod
    def _draw(self, rng: np.random.Generator, n: int, times_s: np.ndarray | None) -> Pairs: ...


@dataclass(frozen=True)
class Fixed(LengthSampler):
    """Every request has the same prompt and output length."""

    prompt: int
    output: int

    def __post_init__(self) -> None:
        require(self.prompt >= 1 and self.output >= 1, "fixed lengths must be >= 1")

    def _draw(self, rng: np.random.Generator, n: int, times_s: np.ndarray | None) -> Pairs:
        return np.full(n, self.prompt), np.full(n, self.output)


@dataclass(frozen=True)
class Uniform(LengthSampler):
    """Prompt and output lengths independently uniform on the inclusive integer ranges."""

    prompt_min: int
    prompt_max: int
    output_min: int
    output_max: int

    def __post_init__(self) -> None:
        require(1 <= self.prompt_min <= self.prompt_max, "need 1 <= prompt_min <= prompt_max")
        require(1 <= self.output_min <= self.output_max, "need 1 <= output_min <= output_max")

    def _draw(self, rng: np.random.Generator, n: int, times_s: np.ndarray | None) -> Pairs:
        prompt = rng.integers(self.prompt_min, self.prompt_max, size=n, endpoint=True)
        output = rng.integers(self.output_min, self.output_max, size=n, endpoint=True)
        return prompt, output


@dataclass(frozen=True)
class LogNormal(LengthSampler):
    """Lognormal lengths with the given means and coefficients of variation, rounded to >= 1.

    ``rho`` correlates the two lengths (correlation of the underlying normals, a Gaussian
    copula). Rounding and the floor at 1 shift the mean slightly for means near 1.
    """

    prompt_mean: float
    prompt_cv: float
    output_mean: float
    output_cv: float
    rho: float = 0.0

    def __post_init__(self) -> None:
        require(self.prompt_mean >= 1 and self.output_mean >= 1, "lognormal means must be >= 1")
        require(self.prompt_cv >= 0 and self.output_cv >= 0, "lognormal CVs must be >= 0")
        require(-1 <= self.rho <= 1, f"rho must be in [-1, 1], got {self.rho}")

    @staticmethod
    def _params(mean: float, cv: float) -> tuple[float, float]:
        sigma = math.sqrt(math.log1p(cv * cv))
        return math.log(mean) - sigma * sigma / 2, sigma

    def _draw(self, rng: np.random.Generator, n: int, times_s: np.ndarray | None) -> Pairs:
        z = rng.standard_normal((2, n))
        z[1] = self.rho * z[0] + math.sqrt(1 - self.rho * self.rho) * z[1]
        out = []
        for row, mean, cv in ((z[0], self.prompt_mean, self.prompt_cv),
                              (z[1], self.output_mean, self.output_cv)):
            mu, sigma = self._params(mean, cv)
            out.append(np.maximum(np.rint(np.exp(mu + sigma * row)), 1))
        return out[0], out[1]


@dataclass(frozen=True)
class Bimodal(LengthSampler):
    """A mix of chat requests (short prompts) and document requests (long prompts): each
    request is a document with probability ``doc_share``; both kinds draw lognormal lengths
    with the given means and one coefficient of variation ``cv``."""

    chat_prompt: float
    chat_output: float
    doc_prompt: float
    doc_output: float
    doc_share: float
    cv: float = 0.6

    def __post_init__(self) -> None:
        require(0 <= self.doc_share <= 1, f"doc share must be in [0, 1], got {self.doc_share}")
        LogNormal(self.chat_prompt, self.cv, self.chat_output, self.cv)  # validates
        LogNormal(self.doc_prompt, self.cv, self.doc_output, self.cv)

    def _draw(self, rng: np.random.Generator, n: int, times_s: np.ndarray | None) -> Pairs:
        doc = rng.random(n) < self.doc_share
        chat = LogNormal(self.chat_prompt, self.cv, self.chat_output, self.cv)
        docs = LogNormal(self.doc_prompt, self.cv, self.doc_output, self.cv)
        prompt = np.empty(n, dtype=np.int64)
        output = np.empty(n, dtype=np.int64)
        k = int(doc.sum())
        prompt[~doc], output[~doc] = chat.sample(rng, n - k)
        prompt[doc], output[doc] = docs.sample(rng, k)
        return prompt, output


@dataclass(frozen=True, eq=False)
class Empirical(LengthSampler):
    """Resamples observed (prompt, output) pairs jointly, uniformly with replacement."""

    table: LengthTable

    @classmethod
    def of(cls, source: Any) -> Empirical:
        """From anything with ``prompt_tokens`` and ``output_tokens`` (a table or a workload)."""
        name = getattr(source, "name", "empirical")
        return cls(LengthTable(name, source.prompt_tokens, source.output_tokens))

    def _draw(self, rng: np.random.Generator, n: int, times_s: np.ndarray | None) -> Pairs:
        index = rng.integers(0, len(self.table), size=n)
        return self.table.prompt_tokens[index], self.table.output_tokens[index]


@dataclass(frozen=True)
class ClipContext(LengthSampler):
    """Keeps prompt + output <= ``max_context``.

    ``mode="truncate"`` caps the prompt at ``max_context - 1`` and then the output at what is
    left (every draw is kept, long ones shortened); ``mode="reject"`` redraws offending pairs
    from ``base`` (the distribution conditioned on fitting), failing after 100 rounds.
    """

    base: LengthSampler
    max_context: int
    mode: str = "truncate"

    def __post_init__(self) -> None:
        require(self.max_context >= 2, f"max_context must be >= 2, got {self.max_context}")
        require(self.mode in ("truncate", "reject"), f"unknown clip mode {self.mode!r}")

    def _draw(self, rng: np.random.Generator, n: int, times_s: np.ndarray | None) -> Pairs:
        prompt, output = self.base.sample(rng, n, times_s)
        if self.mode == "truncate":
            prompt = np.minimum(prompt, self.max_context - 1)
            return prompt, np.minimum(output, self.max_context - prompt)
        prompt, output = prompt.copy(), output.copy()
        for _ in range(100):
            bad = np.flatnonzero(prompt + output > self.max_context)
            if bad.size == 0:
                return prompt, output
            sub_times = times_s[bad] if times_s is not None else None
            prompt[bad], output[bad] = self.base.sample(rng, bad.size, sub_times)
        raise DopdError(f"max_context {self.max_context} rejects almost every length draw")


@dataclass(frozen=True)
class MixShift(LengthSampler):
    """Shifts the length mix from sampler ``a`` to sampler ``b`` over time.

    A request arriving at ``t`` draws from ``b`` with probability
    ``w(t) = clip((t - start_s) / (end_s - start_s), 0, 1)``, else from ``a``; with
    ``end_s == start_s`` (the default when ``end_s`` is None) the switch is a step at
    ``start_s`` (``t >= start_s`` draws from ``b``). Needs the arrival times.
    """

    a: LengthSampler
    b: LengthSampler
    start_s: float
    end_s: float | None = None

    def __post_init__(self) -> None:
        require(self.start_s >= 0, f"mix shift start must be >= 0, got {self.start_s}")
        require(self.end_s is None or self.end_s >= self.start_s, "mix shift must end after start")

    def weight_b(self, times_s: np.ndarray) -> np.ndarray:
        """Probability that a request arriving at each time draws from ``b``."""
        end = self.start_s if self.end_s is None else self.end_s
        if end == self.start_s:
            return (times_s >= self.start_s).astype(np.float64)
        return np.clip((times_s - self.start_s) / (end - self.start_s), 0.0, 1.0)

    def _draw(self, rng: np.random.Generator, n: int, times_s: np.ndarray | None) -> Pairs:
        require(times_s is not None, "a mix-shift length sampler needs the arrival times")
        assert times_s is not None
        use_b = rng.random(n) < self.weight_b(times_s)
        prompt = np.empty(n, dtype=np.int64)
        output = np.empty(n, dtype=np.int64)
        prompt[~use_b], output[~use_b] = self.a.sample(rng, int(n - use_b.sum()), times_s[~use_b])
        prompt[use_b], output[use_b] = self.b.sample(rng, int(use_b.sum()), times_s[use_b])
        return prompt, output


def _empirical_from_path(path: str) -> Empirical:
    return Empirical(load_lengths(path))


LENGTHS: Registry[Any] = Registry("length sampler")
LENGTHS.register("fixed", Fixed)
LENGTHS.register("uniform", Uniform)
LENGTHS.register("lognormal", LogNormal)
LENGTHS.register("bimodal", Bimodal)
LENGTHS.register("empirical", _empirical_from_path)
