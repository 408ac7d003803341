"""Bounded admission of the front end, for every policy: queue limits and ``Retry-After``.

:class:`AdmissionLimits` bounds the requests in flight and their prompt tokens, per instance
(what the dispatcher has placed there and not yet seen finish) and for the whole cluster. A new
request that would pass a cluster limit, or finds every instance it could start on at its
limits, is refused with HTTP 429 and a ``Retry-After`` header. The limits bound the front
end's memory and the workers' queues under any overload: past them the server answers 429 at
once instead of letting the queue (and TTFT, and RSS) grow without end.

:class:`FinishRate` estimates ``Retry-After`` for such a refusal: the seconds until as many
requests finish as the refused one waits behind, at the rate requests finished recently.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

RETRY_AFTER_MIN_S = 1
RETRY_AFTER_MAX_S = 60
RETRY_AFTER_IDLE_S = 5
"""``Retry-After`` when no request finished recently (nothing to derive a rate from)."""


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """Requests and prompt tokens in flight: per instance and for the cluster (None: the
    per-instance limit times ``instances``)."""

    instance_requests: int = 256
    instance_tokens: int = 524_288
    cluster_requests: int | None = None
    cluster_tokens: int | None = None
    instances: int = 1

    @property
    def max_requests(self) -> int:
        return self.cluster_requests or self.instance_requests * self.instances

    @property
    def max_tokens(self) -> int:
        return self.cluster_tokens or self.instance_tokens * self.instances

    def instance_room(self, requests: int, tokens: int, prompt: int) -> bool:
        """Whether an instance holding ``requests`` requests of ``tokens`` prompt tokens can
        take one more of ``prompt`` tokens (an empty instance always can)."""
        if requests == 0:
            return True
        return requests < self.instance_requests and tokens + prompt <= self.instance_tokens

    def cluster_room(self, requests: int, tokens: int, prompt: int) -> bool:
        """The same for the whole cluster."""
        if requests == 0:
            return True
        return requests < self.max_requests and tokens + prompt <= self.max_tokens


def clamp_retry_after(seconds: float) -> int:
    """Whole seconds for a ``Retry-After`` header, in [1, 60]."""
    if not math.isfinite(seconds):
        return RETRY_AFTER_MAX_S
    return int(min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, math.ceil(seconds))))


class FinishRate:
    """Finish times of the last ``keep`` requests (``time.monotonic``), for the rate."""

    def __init__(self, keep: int = 256, window_s: float = 30.0) -> None:
        self.times: deque[float] = deque(maxlen=keep)
        self.window_s = window_s

    def finished(self, now: float) -> None:
        self.times.append(now)

    def rate(self, now: float | None = None) -> float:
        """Requests finished per second lately (0 when none finished in the window)."""
        now = time.monotonic() if now is None else now
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()
        if len(self.times) < 2:
            return 0.0
        return len(self.times) / max(now - self.times[0], 1e-3)

    def retry_after(self, waiting_behind: int) -> int:
        """``Retry-After`` seconds for a request that waits behind ``waiting_behind`` others."""
        rate = self.rate()
        if rate <= 0:
            return RETRY_AFTER_IDLE_S
        return clamp_retry_after(max(1, waiting_behind) / rate)
