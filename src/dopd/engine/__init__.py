"""One instance's engine: KV block manager, continuous-batching scheduler and runners.

The scheduler talks to runners only through :class:`StepPlan` / :class:`StepResult`, so the same
scheduler drives the simulator, the emulated workers and the real PyTorch engine
(:mod:`dopd.engine.model`, imported separately because it needs torch).
"""

from dopd.engine.block_manager import BlockManager
from dopd.engine.latency_runner import LatencyModelRunner, StepRunner
from dopd.engine.plan import (
    DecodeRun,
    FinishReason,
    PrefillChunk,
    StepOutcome,
    StepPlan,
    StepResult,
)
from dopd.engine.scheduler import Scheduler
from dopd.engine.sequence import SchedulerConfig, SeqStatus

__all__ = [
    "BlockManager",
    "DecodeRun",
    "FinishReason",
    "LatencyModelRunner",
    "PrefillChunk",
    "Scheduler",
    "SchedulerConfig",
    "SeqStatus",
    "StepOutcome",
    "StepPlan",
    "StepResult",
    "StepRunner",
]
