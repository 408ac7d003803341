"""Core value types shared by every layer (workload, engine, simulator, control plane, serving).

Everything that crosses a module boundary is a frozen dataclass or an enum defined here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from dopd.errors import require


class Role(StrEnum):
    """What phases an instance serves."""

    PREFILL = "prefill"
    DECODE = "decode"
    MIXED = "mixed"


class RequestState(IntEnum):
    """Life cycle of a request, ordered: a request only moves to a larger value."""

    WAITING = 0
    PREFILLING = 1
    TRANSFERRING = 2
    DECODING = 3
    FINISHED = 4
    ABORTED = 5
    REJECTED = 6

    @property
    def is_terminal(self) -> bool:
        return self >= RequestState.FINISHED


class InstanceState(StrEnum):
    """Life cycle of an instance; a role switch goes ACTIVE -> DRAINING -> SWITCHING -> ACTIVE."""

    STARTING = "starting"
    ACTIVE = "active"
    DRAINING = "draining"
    SWITCHING = "switching"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request of a workload: when it arrives and its token lengths.

    ``output_tokens`` is the number of tokens the request generates (the trace's output length,
    or ``max_tokens`` for a live request); it is at least 1.
    """

    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class SLO:
    """Latency targets: a request meets its SLO when TTFT <= ttft_s and TPOT <= tpot_s."""

    ttft_s: float
    tpot_s: float
    attainment: float = 0.9

    def __post_init__(self) -> None:
        require(
            self.ttft_s > 0 and math.isfinite(self.ttft_s),
            f"TTFT SLO must be > 0 s, got {self.ttft_s}",
        )
        require(
            self.tpot_s > 0 and math.isfinite(self.tpot_s),
            f"TPOT SLO must be > 0 s, got {self.tpot_s}",
        )
        require(
            0 < self.attainment <= 1, f"attainment target must be in (0, 1], got {self.attainment}"
        )


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """What happened to one request; times are seconds on the run's clock.

    ``first_token_s`` and ``finish_s`` are None when the request never got that far
    (rejected or aborted). ``reason`` says why a request was rejected or aborted.
    ``predicted_ttft_s`` is the TTFT the router predicted when it placed the request (None when
    it predicted none).
    """

    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    state: RequestState
    first_token_s: float | None = None
    finish_s: float | None = None
    reason: str = ""
    prefill_instance: int | None = None
    decode_instance: int | None = None
    predicted_ttft_s: float | None = None

    @property
    def ttft_s(self) -> float | None:
        if self.first_token_s is None:
            return None
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """(finish - first token) / (output tokens - 1); None for one-token outputs."""
        if self.first_token_s is None or self.finish_s is None or self.output_tokens <= 1:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)

    @property
    def e2e_s(self) -> float | None:
        if self.finish_s is None:
            return None
        return self.finish_s - self.arrival_s
