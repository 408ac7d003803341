"""Continuous-batching scheduler of ONE instance (prefill-only, decode-only or mixed).

The scheduler owns the request queues and the KV block manager of an instance. Each iteration:
:meth:`Scheduler.schedule` builds a :class:`~dopd.engine.plan.StepPlan` (allocating its KV blocks,
preempting by recompute when the running decodes outgrow memory), a runner executes it, and
:meth:`Scheduler.complete` applies the :class:`~dopd.engine.plan.StepResult`. A simulator may
instead advance a decode-only batch by many steps at once with :meth:`decode_run_limit`,
:meth:`begin_decode_run` and :meth:`end_decode_run` (the real engine never does).

Roles: ``PREFILL`` keeps the KV of a completed prompt (status held) until :meth:`release`, for
transfer to a decode instance; ``MIXED`` and ``DECODE`` decode completed prompts locally. Remote
decodes (KV computed elsewhere) enter through :meth:`reserve_remote` (blocks first; False when
there is no room yet) and :meth:`admit_remote` (the KV arrived). Requests preempted for recompute
prefill again on the same instance, whatever its role.

Running sums (O(1) to read): :attr:`queued_prefill_tokens`, :attr:`queued_prefill_attn`
(sum of ``remaining * prefill_len``), :attr:`num_decoding`, :attr:`decode_kv_sum`.
"""

from __future__ import annotations

from dopd.engine.plan import (
    DecodeRun,
    FinishReason,
    PrefillChunk,
    StepOutcome,
    StepPlan,
    StepResult,
)
from dopd.engine.sequence import Seq, SeqStatus
from dopd.engine.state import SchedulerState
from dopd.errors import require
from dopd.types import Role

_WAITING, _PREFILLING, _HELD, _RESERVED, _DECODING = (
    SeqStatus.WAITING, SeqStatus.PREFILLING, SeqStatus.HELD, SeqStatus.RESERVED, SeqStatus.DECODING,
)


class Scheduler(SchedulerState):
    """Batch formation of one instance (see the module docstring); state in the base class."""

    # ------------------------------------------------------------------ one step
    def schedule(self) -> StepPlan | None:
        """Build the next step (allocating its KV), or None when there is nothing to run."""
        require(self._run is None, "schedule() during a decode run")
        cfg = self.config
        budget = cfg.max_batched_tokens
        preempted: list[int] = []
        run_decodes = bool(self._running)
        if run_decodes and cfg.prefill_priority and self.has_prefill_work():
            run_decodes = False
        decode_ids: list[int] = []
        decode_ctx: list[int] = []
        tables: list[tuple[int, ...]] = []
        ctx_sum = 0
        if run_decodes:
            ctx_sum = self._schedule_decodes(decode_ids, decode_ctx, tables, preempted)
            budget -= len(decode_ids)
        chunks: list[PrefillChunk] = []
        attn = 0
        if decode_ids and self.role == Role.MIXED:
            if cfg.mixed_prefill_tokens is not None:
                budget = min(budget, cfg.mixed_prefill_tokens)
            if cfg.mixed_chunk_table is not None:
                prefix = self._prefilling[0].computed if self._prefilling else 0
                budget = min(budget, cfg.mixed_chunk_table.cap(len(decode_ids), ctx_sum, prefix))
        if budget > 0 and (not decode_ids or not cfg.prefill_priority):
            attn = self._schedule_prefills(chunks, budget)
        self._pending_preempted.extend(preempted)
        if not chunks and not decode_ids:
            return None
        self._step_id += 1
        sampling = decode_ids + [c.request_id for c in chunks if c.completes_prompt]
        return StepPlan(
            step_id=self._step_id,
            prefill=tuple(chunks),
            decode_ids=tuple(decode_ids),
            decode_context=tuple(decode_ctx),
            decode_block_tables=tuple(tables),
            prefill_new_tokens=sum(c.new_tokens for c in chunks),
            prefill_attn_sum=attn,
            decode_ctx_sum=ctx_sum,
            sampling_ids=tuple(sampling),
        )

    def complete(self, plan: StepPlan, result: StepResult) -> StepOutcome:
        """Apply the runner's result of ``plan``; returns what changed."""
        require(result.step_id == plan.step_id, "step result does not match the plan")
        require(len(result.tokens) == len(plan.sampling_ids), "one sampled token per sampling id")
        stopped = dict(result.finished)
        finished: list[tuple[int, FinishReason]] = []
        first: list[int] = []
        prefilled: list[int] = []
        seqs = self._seqs
        for rid in plan.decode_ids:
            seq = seqs.get(rid)
            if seq is None or seq.status != _DECODING:
                continue  # aborted while the step ran
            seq.generated += 1
            seq.kv_len += 1
            self.decode_kv_sum += 1
            if seq.generated >= seq.max_tokens or rid in stopped:
                self._finish(seq, finished, stopped.get(rid))
        for chunk in plan.prefill:
            seq = seqs.get(chunk.request_id)
            if seq is None or seq.status != _PREFILLING:
                continue
            seq.computed += chunk.new_tokens
            self.queued_prefill_tokens -= chunk.new_tokens
            self.queued_prefill_attn -= chunk.new_tokens * seq.prefill_len
            if not chunk.completes_prompt:
                continue
            self._prefilling.remove(seq)
            seq.generated += 1
            if seq.generated == 1:
                first.append(seq.request_id)
            seq.kv_len = seq.prefill_len
            if seq.generated >= seq.max_tokens or seq.request_id in stopped:
                self._finish(seq, finished, stopped.get(seq.request_id))
            elif self.role == Role.PREFILL and seq.generated == 1 and not seq.local:
                seq.status = _HELD
                self._held_count += 1
                self.final_kv_sum -= seq.prompt + seq.max_tokens - 1
                prefilled.append(seq.request_id)
            else:
                self._join(seq)
        preempted = tuple(self._pending_preempted)
        self._pending_preempted = []
        return StepOutcome(tuple(first), tuple(prefilled), tuple(finished), preempted)

    # ------------------------------------------------------------------ decode runs
    def decode_run_limit(self, max_steps: int) -> int:
        """How many decode-only steps (at most ``max_steps``) can run back to back from now: no
        prefill work, no request finishing before the last step, KV growth fitting in free
        memory. 0 means: use :meth:`schedule`."""
        return self._run_limit(max_steps)[0]

    def begin_decode_run(self, max_steps: int) -> DecodeRun | None:
        """Start a run of :meth:`decode_run_limit` (``max_steps``) decode-only steps, or return
        None when that is 0. The run's KV growth is reserved now and claimed by
        :meth:`end_decode_run`."""
        require(self._run is None, "a decode run is already active")
        steps, grow = self._run_limit(max_steps)
        if steps == 0:
            return None
        reserved = self.blocks.reserve(grow)
        assert reserved, "decode run KV reservation failed"
        self._step_id += 1
        self._run = DecodeRun(self._step_id, len(self._running), self.decode_kv_sum, steps)
        self._run_blocks = grow
        return self._run

    def end_decode_run(self, steps_done: int) -> StepOutcome:
        """Apply the first ``steps_done`` steps of the active run (fewer than planned when the
        caller cut it short to admit new work); requests reaching max_tokens finish."""
        run = self._run
        require(run is not None, "no active decode run")
        require(0 <= steps_done <= run.steps, f"a run of {run.steps} steps cannot do {steps_done}")
        self._run = None
        blocks = self.blocks
        finished: list[tuple[int, FinishReason]] = []
        if steps_done:
            done: list[Seq] = []
            bs = blocks.block_size
            claim = blocks.claim
            left = self._run_blocks
            for seq in self._running.values():
                seq.generated += steps_done
                old = seq.kv_len
                seq.kv_len = new = old + steps_done
                grow = (new - 1) // bs - (old - 1) // bs  # held blocks = ceil(kv_len / bs)
                if grow:
                    claim(seq.request_id, grow)
                    left -= grow
                if seq.generated >= seq.max_tokens:
                    done.append(seq)
            self._run_blocks = left
            self.decode_kv_sum += run.decode_count * steps_done
            for seq in done:
                self._finish(seq, finished, None)
        blocks.unreserve(self._run_blocks)
        self._run_blocks = 0
        for seq in self._joining:
            self._join(seq)
        self._joining = []
        for rid in self._deferred_aborts:
            self.abort(rid)
        self._deferred_aborts = []
        return StepOutcome(finished=tuple(finished))

    # ------------------------------------------------------------------ internals
    def _run_limit(self, max_steps: int) -> tuple[int, int]:
        """(steps, KV blocks their growth needs) of the longest decode run possible now."""
        running = self._running
        if (not running or self._run is not None or self.has_prefill_work()
                or len(running) > self.config.max_batched_tokens):
            return 0, 0
        k = max_steps
        for seq in running.values():
            left = seq.max_tokens - seq.generated
            if left < k:
                k = left
        if k <= 0:
            return 0, 0
        free = self.blocks.free_blocks
        grow = self._growth_blocks(k)
        if grow <= free:
            return k, grow
        lo, hi = 0, k  # growth(lo) fits, growth(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._growth_blocks(mid) <= free:
                lo = mid
            else:
                hi = mid
        return lo, self._growth_blocks(lo)

    def _preempt(self, seq: Seq, preempted: list[int]) -> None:
        """Evict a decoding or prefilling request; it re-prefills its known tokens later."""
        rid = seq.request_id
        if seq.status == _DECODING:
            del self._running[rid]
            self.decode_kv_sum -= seq.kv_len
        else:
            self._prefilling.remove(seq)
            self._unqueue(seq)
        self.blocks.free(rid)
        seq.prefill_len = seq.prompt + seq.generated
        seq.kv_len = 0
        self._enqueue(seq, front=True)
        self.preemptions += 1
        preempted.append(rid)

    def _schedule_decodes(self, ids: list[int], ctx: list[int], tables: list[tuple[int, ...]],
                          preempted: list[int]) -> int:
        """Give every running decode (up to the token budget) a block for its next token,
        preempting the latest-admitted requests (decodes not yet scheduled, then prefilling
        ones, then itself) when memory runs out."""
        blocks = self.blocks
        order = list(self._running.values())
        del order[self.config.max_batched_tokens:]
        ctx_sum = 0
        i = 0
        while i < len(order):
            seq = order[i]
            rid = seq.request_id
            while not blocks.allocate(rid, seq.kv_len + 1, admission=False):
                if len(order) - 1 > i:
                    victim = order.pop()
                elif self._prefilling:
                    victim = self._prefilling[-1]
                else:
                    victim = order.pop()  # itself: the last one left
                self._preempt(victim, preempted)
                if victim is seq:
                    break
            else:
                c = seq.kv_len
                ids.append(rid)
                ctx.append(c)
                tables.append(tuple(blocks.table(rid)))
                ctx_sum += c
                i += 1
        return ctx_sum

    def _schedule_prefills(self, chunks: list[PrefillChunk], budget: int) -> int:
        cfg = self.config
        blocks = self.blocks
        attn = 0
        for seq in self._prefilling:
            if budget <= 0:
                break
            rem = seq.prefill_len - seq.computed
            n = rem if rem <= budget else (budget if cfg.chunked_prefill else 0)
            if n <= 0:
                break
            chunks.append(PrefillChunk(seq.request_id, n, seq.computed, n == rem,
                                       tuple(blocks.table(seq.request_id))))
            attn += n * (seq.computed + n)
            budget -= n
        waiting = self._waiting
        while waiting and budget > 0:
            seq = waiting[0]
            rem = seq.prefill_len
            if rem > budget and not cfg.chunked_prefill and chunks:
                break
            if self._slots_used() >= cfg.max_num_seqs:
                break
            if not blocks.allocate(seq.request_id, seq.prefill_len, admission=True):
                break
            waiting.popleft()
            seq.status = _PREFILLING
            self._prefilling.append(seq)
            n = rem if (rem <= budget or not cfg.chunked_prefill) else budget
            chunks.append(PrefillChunk(seq.request_id, n, 0, n == rem,
                                       tuple(blocks.table(seq.request_id))))
            attn += n * n
            budget -= n
        return attn
