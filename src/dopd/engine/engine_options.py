"""Options and counters of one real engine (:class:`dopd.engine.llm_engine.LLMEngine`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dopd.engine.model import DEFAULT_BLOCK_SIZE
from dopd.engine.sequence import SchedulerConfig
from dopd.errors import require
from dopd.types import Role

DEFAULT_SCHEDULER = SchedulerConfig(max_batched_tokens=2048, max_num_seqs=64)


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """How one engine instance runs.

    ``role``: PREFILL engines hand every prompt off after its first token (its KV is kept under a
    lease of ``kv_lease_s`` seconds); DECODE engines continue requests prefilled elsewhere (and
    can still prefill, e.g. when the KV did not arrive within ``kv_timeout_s``); MIXED do both.
    KV memory is ``num_blocks`` blocks of ``block_size`` tokens, or as many as fit in
    ``kv_cache_mb`` MiB when ``num_blocks`` is None. ``max_model_len`` is the context window
    (prompt + output tokens; default the model's ``max_position_embeddings``). ``threads`` sets
    ``torch.set_num_threads`` for the process when given. ``seed`` derives the random seed of
    requests that set none. ``detokenize`` produces text deltas (token ids only when False).
    ``lazy_kv`` reserves the KV cache without writing it (memory is taken as blocks are first
    written; for emulated workers, whose nominal cache can be far larger than what they use).
    """

    role: Role = Role.MIXED
    scheduler: SchedulerConfig = DEFAULT_SCHEDULER
    block_size: int = DEFAULT_BLOCK_SIZE
    num_blocks: int | None = None
    kv_cache_mb: float = 256.0
    max_model_len: int | None = None
    threads: int | None = None
    seed: int = 0
    kv_lease_s: float = 30.0
    kv_timeout_s: float = 10.0
    detokenize: bool = True
    lazy_kv: bool = False

    def __post_init__(self) -> None:
        require(isinstance(self.role, Role), f"role must be a Role, got {self.role!r}")
        require(self.block_size >= 1, f"block size must be >= 1, got {self.block_size}")
        require(
            self.num_blocks is None or self.num_blocks >= 1,
            f"num_blocks must be >= 1, got {self.num_blocks}",
        )
        require(
            math.isfinite(self.kv_cache_mb) and self.kv_cache_mb > 0,
            f"kv_cache_mb must be > 0, got {self.kv_cache_mb}",
        )
        require(
            self.max_model_len is None or self.max_model_len >= 2,
            f"max_model_len must be >= 2, got {self.max_model_len}",
        )
        require(
            self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads}"
        )
        require(isinstance(self.seed, int), f"seed must be an int, got {self.seed!r}")
        for name in ("kv_lease_s", "kv_timeout_s"):
            value = getattr(self, name)
            require(value >= 0 and math.isfinite(value), f"{name} must be >= 0, got {value}")


@dataclass(slots=True)
class EngineStats:
    """Running counters of one engine (a copy is returned by :attr:`LLMEngine.stats`).

    ``busy_s`` sums the runner's step durations. ``kv_exports`` counts prompts handed off under a
    lease, ``lease_expiries`` leases that ran out before release; ``kv_imports`` remote decodes
    whose KV was imported, ``kv_recomputes`` those whose prompt was recomputed here instead.
    """

    steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    max_decode_batch: int = 0
    busy_s: float = 0.0
    kv_exports: int = 0
    lease_expiries: int = 0
    kv_imports: int = 0
    kv_recomputes: int = 0
    preemptions: int = 0
