"""What one instance costs, precomputed once from the latency model for the solver's hot path.

:class:`InstanceModel` turns a :class:`~dopd.perf.base.LatencyModel` plus the engine's batching
limits into a few tables the solver evaluates with numpy:

- prefill, per prompt length ``n`` on a fixed length grid: ``solo(n)``, the time to prefill the
  prompt alone (split into ``max_batched_tokens`` chunks when longer, each chunk attending over
  the cached part), and ``full(n)``, its share of a step filled to the token budget with prompts
  of the same length. Reading a step as ``fixed + m * variable`` over ``m`` batched prompts,
  ``fixed(n)`` and ``variable(n)`` follow from these two, so the cost per prompt at any batch
  size ``m`` is ``variable + fixed / min(m, k(n))`` with ``k(n) = budget // n``. This is how
  batching short prompts under the token budget enters the model;
- decode: ``alpha(B)`` and ``slope`` of the decode-only step time ``alpha(B) + slope * ctx_sum``
  for B = 1 .. ``max_num_seqs``;
- KV hand-off: transfer time per prompt length, and the KV capacity in tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from dopd.control.cluster_config import ClusterConfig
from dopd.control.cluster_models import build_models
from dopd.errors import require

FloatArray = npt.NDArray[np.float64]


class StepTimeModel(Protocol):
    """The part of :class:`dopd.perf.base.LatencyModel` the solver uses."""

    def step_time(self, prefill_new_tokens: int, prefill_attn_sum: int, prefill_count: int,
                  decode_count: int, decode_ctx_sum: int) -> float: ...

    def decode_coefficients(self, decode_count: int) -> tuple[float, float]: ...


class TransferModel(Protocol):
    """A KV transfer model: seconds to move ``num_bytes`` with ``concurrent`` transfers sharing
    the link."""

    def transfer_time(self, num_bytes: float, concurrent: int = 1) -> float: ...


def _length_grid(max_len: int, budget: int) -> FloatArray:
    """Log-spaced lengths 1..max_len plus every chunk boundary (where ``solo`` has a kink)."""
    logs = np.unique(np.round(np.geomspace(1, max_len, 160)))
    edges = np.arange(budget, max_len + 1, budget, dtype=np.float64)
    around = np.concatenate([edges, edges + 1, [max_len]])
    return np.unique(np.concatenate([logs, around[around <= max_len]]))


@dataclass(frozen=True, eq=False)
class InstanceModel:
    """Precomputed cost tables of one instance type (see the module docstring).

    Build with :meth:`build`. ``kv_capacity_tokens`` is the KV pool of one instance;
    ``first_token_after_transfer`` says whether TTFT ends when the KV (with the first token)
    reaches the decode instance (True, dopd's engines and simulator) or when the prefill
    instance samples it (False; the hand-off then delays the decode and counts in TPOT).
    """

    name: str
    max_batched_tokens: int
    max_num_seqs: int
    chunked_prefill: bool
    kv_capacity_tokens: int
    block_size: int
    watermark: float
    first_token_after_transfer: bool
    grid: FloatArray = field(repr=False)
    solo: FloatArray = field(repr=False)
    full: FloatArray = field(repr=False)
    transfer: FloatArray = field(repr=False)
    decode_alpha: FloatArray = field(repr=False)
    decode_slope: float = 0.0

    def __post_init__(self) -> None:
        require(self.max_batched_tokens >= 1, "max batched tokens must be >= 1")
        require(self.max_num_seqs >= 1, "max num seqs must be >= 1")
        require(self.kv_capacity_tokens >= 1, "KV capacity must be >= 1 token")
        for arr in (self.grid, self.solo, self.full, self.transfer, self.decode_alpha):
            arr.setflags(write=False)

    @classmethod
    def build(
        cls,
        latency: StepTimeModel,
        kv_capacity_tokens: int,
        *,
        kv_bytes_per_token: float = 0.0,
        transfer: TransferModel | None = None,
        max_batched_tokens: int = 8192,
        max_num_seqs: int = 256,
        chunked_prefill: bool = True,
        block_size: int = 16,
        watermark: float = 0.01,
        max_prompt_tokens: int = 262144,
        first_token_after_transfer: bool = True,
        name: str | None = None,
    ) -> InstanceModel:
        """Evaluate ``latency`` on the length grid and the decode batch sizes.

        ``transfer`` (None: instantaneous) times the hand-off of ``kv_bytes_per_token * n`` bytes.
        """
        require(kv_capacity_tokens >= 1,
                f"KV capacity must be >= 1 token, got {kv_capacity_tokens}")
        require(max_batched_tokens >= 1, "max batched tokens must be >= 1")
        require(max_prompt_tokens >= 1, "max prompt tokens must be >= 1")
        require(kv_bytes_per_token >= 0, "KV bytes per token must be >= 0")
        budget = int(max_batched_tokens)
        grid = _length_grid(int(max_prompt_tokens), budget)
        solo = np.empty_like(grid)
        full = np.empty_like(grid)
        step = latency.step_time
        for i, n_f in enumerate(grid):
            n = int(n_f)
            if not chunked_prefill or n <= budget:
                solo[i] = step(n, n * n, 1, 0, 0)
            else:
                total, done = 0.0, 0
                while done < n:
                    chunk = min(budget, n - done)
                    total += step(chunk, chunk * (done + chunk), 1, 0, 0)
                    done += chunk
                solo[i] = total
            k = budget // n if n <= budget else 1
            full[i] = step(k * n, k * n * n, k, 0, 0) / k if k >= 2 else solo[i]
        move = np.zeros_like(grid)
        if transfer is not None and kv_bytes_per_token > 0:
            move = np.array([transfer.transfer_time(kv_bytes_per_token * n) for n in grid])
        alpha = np.array([0.0] + [latency.decode_coefficients(b)[0]
                                  for b in range(1, max_num_seqs + 1)])
        slope = float(latency.decode_coefficients(1)[1])
        return cls(
            name=name or str(getattr(latency, "name", "instance")),
            max_batched_tokens=budget, max_num_seqs=int(max_num_seqs),
            chunked_prefill=bool(chunked_prefill), kv_capacity_tokens=int(kv_capacity_tokens),
            block_size=int(block_size), watermark=float(watermark),
            first_token_after_transfer=bool(first_token_after_transfer),
            grid=grid, solo=solo, full=full, transfer=move, decode_alpha=alpha,
            decode_slope=slope,
        )

    @classmethod
    def from_catalog(
        cls, model: str = "llama-3-8b", gpu: str = "a100-80gb", tp: int = 1,
        preset: str = "modern", calibration: str | None = None, kv_mem_util: float = 0.9,
        kv_link: str = "nic", max_batched_tokens: int = 8192, profile: str | None = None,
        **kwargs: Any,
    ) -> InstanceModel:
        """Build from catalog names through :mod:`dopd.perf` (``kwargs`` go to :meth:`build`).

        Unknown names or a model that does not fit raise ``DopdError``.
        """
        from dopd import perf

        latency = perf.build_latency_model(model, gpu, tp=tp, preset=preset,
                                           calibration=calibration, mem_util=kv_mem_util,
                                           profile=profile)
        capacity = perf.kv_capacity_tokens(model, gpu, tp, kv_mem_util,
                                           max_batched_tokens=max_batched_tokens)
        transfer = perf.KVTransferModel.from_hardware(gpu, tp=tp, link=kv_link)
        return cls.build(latency, int(capacity),
                         kv_bytes_per_token=float(perf.kv_bytes_per_token(model)),
                         transfer=transfer, max_batched_tokens=max_batched_tokens,
                         name=str(getattr(latency, "name", model)), **kwargs)

    @classmethod
    def from_cluster_config(cls, config: ClusterConfig, latency: StepTimeModel | None = None
                            ) -> InstanceModel:
        """The instance type of a :class:`~dopd.control.cluster_config.ClusterConfig`, with its
        performance figures (KV blocks, watermark, KV link) and ``latency`` (a policy passes
        its context's: the control plane's belief; None: the configured model)."""
        models = build_models(config)
        model = models.latency if latency is None else latency
        return cls.build(
            model, int(models.kv_blocks * config.block_size),
            kv_bytes_per_token=float(models.kv_bytes_per_token), transfer=models.transfer,
            max_batched_tokens=config.max_batched_tokens, max_num_seqs=config.max_num_seqs,
            chunked_prefill=config.chunked_prefill, block_size=config.block_size,
            watermark=models.watermark, name=str(getattr(model, "name", "instance")),
        )

    # ------------------------------------------------------------------ lookups
    def prefill_tables(self, lengths: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """``(solo, fixed, variable)`` seconds per prompt for each length (interpolated on the
        grid; lengths beyond ``max_prompt_tokens`` are costed as that length)."""
        solo = np.interp(lengths, self.grid, self.solo)
        full = np.interp(lengths, self.grid, self.full)
        k = np.where(lengths <= self.max_batched_tokens,
                     np.floor(self.max_batched_tokens / np.maximum(lengths, 1.0)), 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            fixed = np.where(k >= 2, (solo - full) * k / (k - 1), 0.0)
        fixed = np.clip(fixed, 0.0, solo)
        return solo, fixed, solo - fixed

    def batch_limit(self, lengths: FloatArray) -> FloatArray:
        """Most prompts of each length that fit one step's token budget (>= 1)."""
        return np.maximum(np.floor(self.max_batched_tokens / np.maximum(lengths, 1.0)), 1.0)

    def transfer_time(self, lengths: FloatArray) -> FloatArray:
        """KV hand-off seconds per prompt length."""
        return np.interp(lengths, self.grid, self.transfer)

    def decode_step(self, batch: FloatArray, ctx_mean: float) -> FloatArray:
        """Decode-only step seconds at (fractional) batch sizes with mean context ``ctx_mean``."""
        b = np.clip(np.asarray(batch, dtype=np.float64), 0.0, float(self.max_num_seqs))
        alpha = np.interp(b, np.arange(self.decode_alpha.size, dtype=np.float64),
                          self.decode_alpha)
        # Below one sequence, interpolate towards the single-sequence step time.
        alpha = np.where(b < 1.0, self.decode_alpha[1], alpha)
        return alpha + self.decode_slope * b * ctx_mean

    def kv_batch_limit(self, kv_per_seq: float) -> float:
        """Sequences whose KV fits the pool (watermark kept), at ``kv_per_seq`` tokens each."""
        require(kv_per_seq > 0, "KV per sequence must be > 0")
        usable = self.kv_capacity_tokens * (1.0 - self.watermark)
        blocks = math.ceil(kv_per_seq / self.block_size) * self.block_size
        return max(usable / max(blocks, kv_per_seq), 0.0)
