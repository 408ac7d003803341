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
"""

from __future__ import annotations

from dopd.control.ratio.instance import StepTimeModel
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
    """``mixtok=``: ``auto`` (derived), ``off`` (None: the cluster's budget) or a token count
    (>= 1); DopdError otherwise."""
    text = value.strip().lower()
    if text in ("auto", "off"):
        return None if text == "off" else "auto"
    require(text.isdigit() and int(text) >= 1,
            f"policy dopd: mixtok must be auto, off or a token count >= 1, got {value!r}")
    return int(text)
