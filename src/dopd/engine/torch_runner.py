"""The model runner: executes a scheduler's :class:`StepPlan` with the PyTorch model.

:class:`TorchRunner` turns the plan into :class:`~dopd.engine.model.Segment` (decodes first, then
prefill chunks, the order of :attr:`StepPlan.sampling_ids`), runs one paged forward (the model
computes logits for the last position of each segment only), samples one token for every
sampling request with the request's own parameters and generator, appends it to the request's
:class:`RequestRecord`, checks the stop conditions (EOS, stop token ids, stop strings) and
answers with a :class:`StepResult`. Block ids of the plan's block tables are indices into the
model's paged pool: the scheduler's block manager and the cache have the same ``num_blocks``.
Reaching ``max_tokens`` is the scheduler's business, not reported here.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping

import torch

from dopd.engine.model import LlamaModel, PagedKVCache, Sampler, Segment, Tokenizer, check_stop
from dopd.engine.plan import FinishReason, StepPlan, StepResult
from dopd.engine.request_state import RequestRecord
from dopd.errors import require


class TorchRunner:
    """Runs step plans on ``model`` with KV in ``cache`` for the requests in ``records``.

    ``records`` is the engine's live mapping of request id to :class:`RequestRecord` (read and
    appended to, never resized here). ``eos_token_ids`` end a request unless its parameters say
    ``ignore_eos``; ``tokenizer`` is needed only for requests with stop strings. Implements the
    :class:`~dopd.engine.latency_runner.StepRunner` protocol. Not thread-safe (one step at a time).
    """

    __slots__ = ("cache", "eos_token_ids", "model", "records", "sampler", "tokenizer")

    def __init__(
        self,
        model: LlamaModel,
        cache: PagedKVCache,
        records: Mapping[int, RequestRecord],
        *,
        eos_token_ids: Collection[int] = (),
        tokenizer: Tokenizer | None = None,
    ) -> None:
        require(
            cache.num_layers == model.config.num_layers,
            "KV cache does not match the model's layers",
        )
        self.model = model
        self.cache = cache
        self.records = records
        self.eos_token_ids = frozenset(eos_token_ids)
        self.tokenizer = tokenizer
        self.sampler = Sampler()

    def segments(self, plan: StepPlan) -> list[Segment]:
        """The forward's segments: one per decode, then one per prefill chunk.

        Raises DopdError when the plan disagrees with a request's tokens (a bookkeeping bug).
        """
        records = self.records
        segs: list[Segment] = []
        for rid, ctx, table in zip(
            plan.decode_ids, plan.decode_context, plan.decode_block_tables, strict=True
        ):
            rec = records[rid]
            require(
                ctx == rec.num_tokens - 1,
                f"request {rid}: decode over {ctx} cached tokens, but it has {rec.num_tokens}",
            )
            segs.append(Segment(table, ctx, (rec.output_ids or rec.prompt_ids)[-1:]))
        for chunk in plan.prefill:
            rec = records[chunk.request_id]
            end = chunk.cached_tokens + chunk.new_tokens
            total = rec.num_tokens
            require(
                end <= total and (end == total) == chunk.completes_prompt,
                f"request {chunk.request_id}: prefill to {end} of {total} tokens "
                f"(completes_prompt={chunk.completes_prompt})",
            )
            if chunk.cached_tokens >= len(rec.prompt_ids):
                ids = rec.output_ids[chunk.cached_tokens - len(rec.prompt_ids) : end - len(
                    rec.prompt_ids)]
            elif end <= len(rec.prompt_ids):
                ids = rec.prompt_ids[chunk.cached_tokens : end]
            else:
                ids = rec.tokens()[chunk.cached_tokens : end]
            segs.append(Segment(chunk.block_table, chunk.cached_tokens, ids))
        return segs

    def execute(self, plan: StepPlan) -> StepResult:
        """Run ``plan``: forward, sample, append tokens, check stops."""
        start = time.perf_counter()
        logits = self.model.forward(self.segments(plan), self.cache)
        n_dec = len(plan.decode_ids)
        rows = list(range(n_dec))
        rows.extend(n_dec + i for i, c in enumerate(plan.prefill) if c.completes_prompt)
        if len(rows) != logits.shape[0]:
            logits = logits.index_select(
                0, torch.tensor(rows, dtype=torch.int64, device=logits.device)
            )
        records = self.records
        recs = [records[rid] for rid in plan.sampling_ids]
        tokens = self.sampler.sample(
            logits, [r.params for r in recs], [r.generator for r in recs]
        ) if recs else []
        finished: list[tuple[int, FinishReason]] = []
        eos = self.eos_token_ids
        tok = self.tokenizer
        for rec, token in zip(recs, tokens, strict=True):
            rec.output_ids.append(token)
            params = rec.params
            if not (params.stop or params.stop_token_ids or eos):
                continue
            hit = check_stop(rec.output_ids, params, eos, tok)
            if hit is not None and hit.reason == FinishReason.STOP:
                finished.append((rec.request_id, FinishReason.STOP))
        return StepResult(plan.step_id, time.perf_counter() - start, tuple(tokens),
                          tuple(finished))
