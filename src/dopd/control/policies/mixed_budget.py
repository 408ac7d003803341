"""The token budget of MIXED instances (``dopd``'s ``mixtok=``): how many prompt tokens a step
that also carries decodes may take.

A MIXED instance batches prompt chunks into its decode steps (chunked prefill). With the
cluster's token budget (8192 by default) one chunk can stretch a decode step by several times
the TPOT SLO; a pool of MIXED instances then misses TPOT at loads it could otherwise carry, and
the hybrid leaves all-MIXED for a split it did not need. The policy therefore picks a per-role
budget: the largest chunk (a power of two times :data:`MIN_TOKENS`, at most the cluster's
budget) whose extra step time over a typical decode step (:data:`DECODES` decodes at
:data:`CONTEXT` tokens of context each; the chunk mid-prompt, attending over itself and as many
tokens before it) stays within ``share`` x the TPOT SLO, on the policy's latency belief. A step
without decodes still prefills up to the cluster's budget (no decode waits on it), so light
loads keep their TTFT. The drivers apply it through
:func:`dopd.control.flow.instances.scheduler_config`.

``mixtok=step`` (the default) keeps that budget (at ``mixshare`` 1.0) and caps each step
further by the decodes it carries and by where its first chunk sits in its prompt
(:func:`mixed_chunk_table`): a step may take the prompt tokens that keep it, on the belief,
within ``mixstep`` (0.9) x the TPOT SLO, so a few decodes leave room for long chunks (TTFT), a
large batch gets short ones (TPOT), and a chunk deep in a long prompt, which attends over all
of it, gets fewer tokens. The table is computed once, from the belief at the start (re-deriving
it whenever the online calibration moved was tried on seed 0 with an earlier form of the table:
geometric mean 0.850x against 0.846x, too little for the machinery, left out).
:func:`mixed_step_bound` gives the colocated predictor the longest step these caps allow
(``chunkbound=on``).
"""

from __future__ import annotations

import math

import numpy as np

from dopd.control.ratio.colocated import StepBound
from dopd.control.ratio.instance import StepTimeModel
from dopd.engine.chunk_table import ChunkTable
from dopd.errors import require

MIN_TOKENS = 128
"""The smallest budget chosen (smaller chunks cost more in per-step overhead than they save)."""

DECODES = 32
CONTEXT = 1024
"""The decode batch of the reference step: decodes, and tokens of context each."""


def mixed_prefill_tokens(latency: StepTimeModel, tpot_slo_s: float, cluster_budget: int,
                         share: float = 0.5) -> int:
    """The largest budget (see the module doc) whose chunk adds at most ``share`` x
    ``tpot_slo_s`` to the reference decode step; :data:`MIN_TOKENS` (or the cluster's budget
    when smaller) when none does."""
    require(tpot_slo_s > 0, f"TPOT SLO must be > 0, got {tpot_slo_s}")
    require(share > 0, f"mixed budget share must be > 0, got {share}")
    require(cluster_budget >= 1, f"cluster budget must be >= 1, got {cluster_budget}")
    base = latency.step_time(0, 0, 0, DECODES, DECODES * CONTEXT)
    best = min(MIN_TOKENS, cluster_budget)
    tokens = MIN_TOKENS
    while tokens <= cluster_budget:
        extra = latency.step_time(tokens, 2 * tokens * tokens, 1, DECODES,
                                  DECODES * CONTEXT) - base
        if extra > share * tpot_slo_s:
            break
        best = tokens
        tokens *= 2
    return best


def parse_mixtok(value: str) -> int | str | None:
    """``mixtok=``: ``auto`` (one budget derived), ``step`` (a budget per step by its decodes:
    :func:`mixed_chunk_table`), ``off`` (None: the cluster's budget) or a token count (>= 1);
    DopdError otherwise."""
    text = value.strip().lower()
    if text in ("auto", "step", "off"):
        return None if text == "off" else text
    require(text.isdigit() and int(text) >= 1,
            f"policy dopd: mixtok must be auto, step, off or a token count >= 1, got {value!r}")
    return int(text)


TABLE_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
"""Decode counts of a :class:`~dopd.engine.chunk_table.ChunkTable`'s rows."""

TABLE_CONTEXTS = tuple(2 ** k for k in range(7, 18))
"""Mean contexts per decode (128 to 131072 tokens) of its columns."""

TABLE_PREFIXES = (0, *(2 ** k for k in range(9, 18)))
"""Positions of the first chunk in its prompt (0, then 512 to 131072 tokens)."""

TABLE_FLOOR = 64
"""Prompt tokens a MIXED step with prompt work always takes (prompts progress even when the
decodes alone fill the step-time target)."""


def mixed_chunk_table(latency: StepTimeModel, step_target_s: float, cluster_budget: int,
                      floor: int = TABLE_FLOOR) -> ChunkTable:
    """``mixtok=step``: per decode count, mean context and chunk position (the grids above),
    the most prompt tokens (at most the cluster's budget less one per decode) a MIXED step may
    add, as one chunk attending over its prefix and itself, and still be predicted by
    ``latency`` to end within ``step_target_s``. Predicted step time grows with the chunk, so
    each entry is a bisection."""
    require(step_target_s > 0, f"step target must be > 0 s, got {step_target_s}")
    require(cluster_budget >= 1, f"cluster budget must be >= 1, got {cluster_budget}")

    def fits(tokens: int, prefix: int, decodes: int, context: int) -> bool:
        return latency.step_time(tokens, tokens * (prefix + tokens), 1 if tokens else 0,
                                 decodes, decodes * context) <= step_target_s

    def most(prefix: int, decodes: int, context: int, hi: int) -> int:
        lo = 0
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid, prefix, decodes, context) else (lo, mid - 1)
        return lo

    planes = []
    for decodes in TABLE_COUNTS:
        plane = []
        for context in TABLE_CONTEXTS:
            hi = max(cluster_budget - decodes, 0) if fits(0, 0, decodes, context) else 0
            line = []
            for prefix in TABLE_PREFIXES:  # a deeper chunk costs more: the bound only shrinks
                hi = most(prefix, decodes, context, hi)
                line.append(hi)
            plane.append(tuple(line))
        planes.append(tuple(plane))
    return ChunkTable(counts=TABLE_COUNTS, contexts=TABLE_CONTEXTS, prefixes=TABLE_PREFIXES,
                      tokens=tuple(planes), floor=min(floor, cluster_budget),
                      target_s=step_target_s)


def mixed_step_bound(latency: StepTimeModel, tokens: int | None,
                     table: ChunkTable | None) -> StepBound | None:
    """For the colocated predictor (``mixed_step`` of
    :func:`~dopd.control.ratio.colocated.predict_colocated`): decode-only step times (an
    array) to the longest steps with the chunk cap (``tokens``) and the table's (its target, or
    the decodes plus its floor chunk beyond it); None when neither caps the chunks. The chunk's
    cost is taken on the reference decode step (:data:`DECODES` at :data:`CONTEXT`)."""
    if tokens is None and table is None:
        return None
    base = latency.step_time(0, 0, 0, DECODES, DECODES * CONTEXT)

    def extra(chunk: int) -> float:
        return max(latency.step_time(chunk, 2 * chunk * chunk, 1, DECODES,
                                     DECODES * CONTEXT) - base, 0.0)

    cap_s = extra(tokens) if tokens is not None else math.inf
    if table is None:
        return lambda t: t + cap_s
    floor_s, target = extra(table.floor), table.target_s
    return lambda t: np.minimum(t + cap_s, np.maximum(target, t + floor_s))


def mixed_budgets(latency: StepTimeModel, tpot_slo_s: float, cluster_budget: int,
                  mode: int | str | None, share: float, step_share: float,
                  ) -> tuple[int | None, ChunkTable | None, StepBound | None]:
    """What ``mixtok=`` (``mode``: ``auto``, ``step``, None for off, or a token count) gives a
    policy on the belief ``latency``: the MIXED budget, the per-step table (``step`` only, at
    ``step_share`` x the TPOT SLO) and the step bound of the colocated predictor."""
    tokens = mixed_prefill_tokens(latency, tpot_slo_s, cluster_budget, share) \
        if mode in ("auto", "step") else None if mode is None else int(mode)
    table = mixed_chunk_table(latency, step_share * tpot_slo_s, cluster_budget) \
        if mode == "step" else None
    return tokens, table, mixed_step_bound(latency, tokens, table)
