"""KV-cache sizing: bytes per token, tensor-parallel layout and how many tokens fit in memory.

Tensor parallelism (TP) splits the attention heads over ``tp`` GPUs, so ``tp`` must divide the
number of query heads. Key/value heads are split too when ``tp`` divides ``kv_heads``; when
``kv_heads < tp`` (GQA models at high TP, e.g. Llama-3-70B with 8 KV heads at tp=16) each KV head is
*replicated* on ``tp / kv_heads`` GPUs, as vLLM does, so every GPU holds one KV head and the
instance stores each token's KV ``tp / kv_heads`` times. Other combinations raise ``DopdError``.

Memory budget of one GPU (the instance's capacity is the per-GPU token count, as every GPU holds a
slice of every token):

    KV bytes = mem_util * memory - weights / tp - reserve

``reserve`` is the activation/workspace memory the engine keeps outside the KV pool. By default it
is ``WORKSPACE_BYTES`` (1 GiB: CUDA context, cuBLAS and NCCL workspaces, CUDA-graph pools; an
estimate in line with the 0.5-1.5 GiB of non-torch memory vLLM reports when it profiles) plus the
peak activations of a ``max_batched_tokens`` prefill step: per token, four ``hidden``-wide
activations (residual, normed input, attention output, q/k/v) and the MLP intermediate
(``2 * ffn / tp`` for gated MLPs), at ``dtype_bytes``; plus FP32 logits for 256 sampled sequences.
For OPT-13B at tp=1 this is about 2.0 GB, which reproduces the KV capacities DistServe reports
(see the tests).
"""

from __future__ import annotations

from dopd.errors import DopdError, require
from dopd.perf.hardware import GiB, HardwareSpec, get_gpu
from dopd.perf.model_catalog import ModelSpec, get_model

WORKSPACE_BYTES = 1 * GiB
LOGIT_SEQUENCES = 256


def kv_bytes_per_token(model: str | ModelSpec) -> int:
    """Bytes of K and V for one token over all layers: 2 * layers * kv_heads * head_dim * dtype."""
    spec = get_model(model)
    return 2 * spec.layers * spec.kv_heads * spec.head_dim * spec.dtype_bytes


def check_tp(model: str | ModelSpec, tp: int) -> None:
    """Raise ``DopdError`` unless ``tp`` can shard ``model`` (see the module docstring)."""
    spec = get_model(model)
    require(isinstance(tp, int) and tp >= 1, f"tp must be a positive integer, got {tp!r}")
    require(spec.heads % tp == 0,
            f"tp={tp} does not divide the {spec.heads} attention heads of {spec.name}")
    require(spec.kv_heads % tp == 0 or tp % spec.kv_heads == 0,
            f"tp={tp} neither divides nor is a multiple of the {spec.kv_heads} KV heads of "
            f"{spec.name}")


def kv_heads_per_gpu(model: str | ModelSpec, tp: int) -> int:
    """KV heads each GPU stores: kv_heads / tp, or 1 when replicated (kv_heads < tp)."""
    spec = get_model(model)
    check_tp(spec, tp)
    return max(1, spec.kv_heads // tp)


def kv_bytes_per_token_per_gpu(model: str | ModelSpec, tp: int) -> int:
    """Bytes of one token's KV on each GPU of a ``tp``-way instance (replication included)."""
    spec = get_model(model)
    return 2 * spec.layers * kv_heads_per_gpu(spec, tp) * spec.head_dim * spec.dtype_bytes


def default_reserve_bytes(model: str | ModelSpec, tp: int, max_batched_tokens: int = 8192) -> int:
    """Per-GPU activation/workspace reserve used when none is given (see the module docstring)."""
    spec = get_model(model)
    require(max_batched_tokens >= 1, f"max_batched_tokens must be >= 1, got {max_batched_tokens}")
    mlp = (2 if spec.gated_mlp else 1) * spec.ffn // tp
    activations = max_batched_tokens * (4 * spec.hidden + mlp) * spec.dtype_bytes
    logits = LOGIT_SEQUENCES * spec.vocab * 4
    return WORKSPACE_BYTES + activations + logits


def kv_capacity_tokens(
    model: str | ModelSpec,
    gpu: str | HardwareSpec,
    tp: int = 1,
    mem_util: float = 0.9,
    reserve_bytes: int | None = None,
    max_batched_tokens: int = 8192,
) -> int:
    """Tokens whose KV fits in a ``tp``-GPU instance: per-GPU free bytes / per-GPU bytes per token.

    ``mem_util`` is the share of each GPU's memory the engine may use (vLLM's
    ``gpu_memory_utilization``); ``reserve_bytes`` the per-GPU activation/workspace reserve
    (default: :func:`default_reserve_bytes`). Raises ``DopdError`` if the weights and reserve leave
    no room for a single token, or for a bad ``tp`` / ``mem_util``.
    """
    spec = get_model(model)
    hw = get_gpu(gpu)
    check_tp(spec, tp)
    require(0 < mem_util <= 1, f"mem_util must be in (0, 1], got {mem_util}")
    reserve = default_reserve_bytes(spec, tp, max_batched_tokens) if reserve_bytes is None \
        else reserve_bytes
    require(reserve >= 0, f"reserve_bytes must be >= 0, got {reserve}")
    budget = mem_util * hw.memory_bytes
    weights = spec.weight_bytes / tp
    free = budget - weights - reserve
    per_token = kv_bytes_per_token_per_gpu(spec, tp)
    if free < per_token:
        raise DopdError(
            f"{spec.name} does not fit on {hw.name} at tp={tp}: weights {weights / GiB:.1f} GiB + "
            f"reserve {reserve / GiB:.1f} GiB per GPU exceed {budget / GiB:.1f} GiB "
            f"(mem_util {mem_util})"
        )
    return int(free // per_token)
