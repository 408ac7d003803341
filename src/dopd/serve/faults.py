"""Fault handling settings and bookkeeping of the front end: worker restarts, the stall
watchdog's timeout, and the test-only crash hook.

:class:`FaultPolicy` is what :class:`~dopd.serve.cluster.WorkerCluster` reads: how long a worker
with work may go without reporting before it is declared stalled (killed, its requests placed
again, restarted), and how restarts back off. :class:`RestartBackoff` counts one instance's
losses in a sliding window: the first loss in the window restarts at once, each further one
waits twice as long as the one before (``backoff_s``, ``2 * backoff_s``, ... up to
``backoff_max_s``); once the window holds no loss the delay is back to zero. A worker is never
given up for good: a crash loop only slows its restarts down.

``CRASH_MARKER``: with ``fault_injection`` on (off by default; a test and benchmark hook, never
for production), a worker that receives a prompt starting with these token ids exits abruptly
(``os._exit``) before its next step, with the whole batch it holds, as a crashing kernel or
sampler would.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

CRASH_MARKER: tuple[int, ...] = (3, 1, 4, 1, 5, 9, 2, 6)
"""Prompt prefix (token ids) that makes a worker with fault injection on crash."""

CRASH_EXIT_CODE = 70


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    """How the cluster treats failing workers (see the module docstring). ``stall_timeout_s``
    0 turns the watchdog off."""

    stall_timeout_s: float = 10.0
    restart_window_s: float = 60.0
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 30.0
    fault_injection: bool = False


class RestartBackoff:
    """One instance's recent losses and the delay before its next restart (see the module
    docstring). ``clock`` is ``time.monotonic`` unless a test gives its own."""

    def __init__(self, policy: FaultPolicy, clock: Callable[[], float] | None = None) -> None:
        self.policy = policy
        self.clock = clock or time.monotonic
        self.losses: deque[float] = deque(maxlen=64)

    def recent(self) -> int:
        """Losses within the window, ending now."""
        now = self.clock()
        while self.losses and now - self.losses[0] > self.policy.restart_window_s:
            self.losses.popleft()
        return len(self.losses)

    def record(self) -> float:
        """Record a loss now; returns the seconds to wait before restarting."""
        n = self.recent()
        self.losses.append(self.clock())
        if n == 0:
            return 0.0
        p = self.policy
        return float(min(p.restart_backoff_max_s, p.restart_backoff_s * 2 ** (n - 1)))
