"""The per-step prompt budget of a MIXED instance, by the decodes the step carries.

A MIXED step carries the running decodes and, in the budget left, prompt chunks. With a fixed
budget the step time grows with the decode batch, so one budget is too large at high load (the
decodes miss TPOT) or too small at low load (prompts wait). A :class:`ChunkTable` is computed by
the control plane from its latency belief: for a grid of decode counts, mean contexts per decode
and positions of the chunk in its prompt (a chunk deep in a long prompt attends over all of it),
the most prompt tokens a step may add and still be predicted to end within a step-time target.
The scheduler looks its step up in it (:meth:`ChunkTable.cap`). It is plain data (tuples of ints
and floats): it pickles into a worker process with its scheduler config.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from itertools import pairwise

from dopd.errors import require


@dataclass(frozen=True, slots=True)
class ChunkTable:
    """``tokens[i][j][k]``: the prompt tokens a step with ``counts[i]`` decodes of mean context
    ``contexts[j]`` may add when its first chunk starts ``prefixes[k]`` tokens into its prompt
    (0 when the decodes alone reach the target); ``floor``: the least a step with prompt work
    always takes, so prompts progress even when the decodes alone fill the target. The grids are
    strictly increasing, counts and contexts positive, prefixes from 0; the target (seconds) is
    recorded for reports."""

    counts: tuple[int, ...]
    contexts: tuple[int, ...]
    prefixes: tuple[int, ...]
    tokens: tuple[tuple[tuple[int, ...], ...], ...]
    floor: int
    target_s: float

    def __post_init__(self) -> None:
        for name, grid, low in (("counts", self.counts, 1), ("contexts", self.contexts, 1),
                                ("prefixes", self.prefixes, 0)):
            require(len(grid) >= 1 and grid[0] >= low
                    and all(b > a for a, b in pairwise(grid)),
                    f"chunk table {name} must be a non-empty, strictly increasing grid from "
                    f">= {low}")
        require(len(self.tokens) == len(self.counts)
                and all(len(plane) == len(self.contexts) for plane in self.tokens)
                and all(len(line) == len(self.prefixes) for plane in self.tokens
                        for line in plane),
                "chunk table tokens must have one entry per count, context and prefix")
        require(all(t >= 0 for plane in self.tokens for line in plane for t in line),
                "chunk table tokens must be >= 0")
        require(self.floor >= 0, f"chunk table floor must be >= 0, got {self.floor}")
        require(self.target_s > 0, f"chunk table target must be > 0 s, got {self.target_s}")

    def cap(self, decodes: int, decode_ctx_sum: int, prefix: int = 0) -> int:
        """Prompt tokens a step with ``decodes`` decodes over ``decode_ctx_sum`` tokens of
        context may take when its first chunk starts ``prefix`` tokens into its prompt: linear
        in each of the three between grid points (the edge values beyond the grid), at least
        :attr:`floor`."""
        require(decodes >= 1, f"a chunk cap needs >= 1 decode, got {decodes}")
        require(prefix >= 0, f"a chunk prefix must be >= 0, got {prefix}")
        i, di = _locate(self.counts, decodes)
        j, dj = _locate(self.contexts, decode_ctx_sum / decodes)
        k, dk = _locate(self.prefixes, prefix)

        def line(a: int, b: int) -> float:
            values = self.tokens[a][b]
            return values[k] + dk * (values[min(k + 1, len(values) - 1)] - values[k])

        def plane(a: int) -> float:
            low = line(a, j)
            return low + dj * (line(a, min(j + 1, len(self.contexts) - 1)) - low)

        low = plane(i)
        value = low + di * (plane(min(i + 1, len(self.counts) - 1)) - low)
        return max(self.floor, int(value))


def _locate(grid: tuple[int, ...], x: float) -> tuple[int, float]:
    """The grid index at or below ``x`` and the share of the way to the next (0 outside)."""
    hi = bisect.bisect_left(grid, x)
    if hi < len(grid) and grid[hi] == x:
        return hi, 0.0
    if hi == 0:
        return 0, 0.0
    if hi >= len(grid):
        return len(grid) - 1, 0.0
    lo = hi - 1
    return lo, (x - grid[lo]) / (grid[hi] - grid[lo])
