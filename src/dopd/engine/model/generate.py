"""Reference generation without a scheduler: prefill (optionally chunked), then greedy decodes.

This drives :meth:`LlamaModel.forward` exactly as an engine would, one sequence at a time; tests
use it as the ground truth for the engine and to compare with transformers.
"""

from __future__ import annotations

from collections.abc import Sequence

from dopd.engine.model.batch import Segment
from dopd.engine.model.llama import LlamaModel
from dopd.engine.model.paged_cache import DEFAULT_BLOCK_SIZE
from dopd.errors import require


def generate_greedy(
    model: LlamaModel,
    prompt_ids: Sequence[int],
    max_new: int,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    prefill_chunk: int | None = None,
    stop_token_ids: Sequence[int] = (),
) -> list[int]:
    """Greedy continuation of ``prompt_ids``: up to ``max_new`` new token ids.

    The prompt is prefilled in chunks of ``prefill_chunk`` tokens (all at once when None). The
    sequence's blocks are allocated in reverse order so the block table is not the identity.
    Generation stops after a token in ``stop_token_ids`` (which is included in the result).
    """
    require(len(prompt_ids) > 0, "prompt must have at least one token")
    require(max_new >= 0, f"max_new must be >= 0, got {max_new}")
    require(
        prefill_chunk is None or prefill_chunk > 0,
        f"prefill_chunk must be > 0, got {prefill_chunk}",
    )
    if max_new == 0:
        return []
    total = len(prompt_ids) + max_new
    num_blocks = -(-total // block_size)
    cache = model.make_cache(num_blocks, block_size)
    table = list(range(num_blocks - 1, -1, -1))
    chunk = prefill_chunk or len(prompt_ids)
    prompt = list(prompt_ids)
    logits = None
    for start in range(0, len(prompt), chunk):
        logits = model.forward([Segment(table, start, prompt[start : start + chunk])], cache)
    assert logits is not None
    stops = set(stop_token_ids)
    out: list[int] = []
    cached = len(prompt)
    while True:
        token = int(logits[0].argmax())
        out.append(token)
        if len(out) >= max_new or token in stops:
            return out
        logits = model.forward([Segment(table, cached, [token])], cache)
        cached += 1
