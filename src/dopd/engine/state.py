"""Request state of one instance's scheduler: queues, intake, abort and running sums.

:class:`SchedulerState` is the part of :class:`dopd.engine.scheduler.Scheduler` that keeps the
books; batch formation lives in the subclass. See that module for the contract.
"""

from __future__ import annotations

from collections import deque

from dopd.engine.block_manager import BlockManager
from dopd.engine.plan import DecodeRun, FinishReason
from dopd.engine.sequence import SchedulerConfig, Seq, SeqStatus
from dopd.engine.waitqueue import ShortFirstQueue, work_ahead
from dopd.errors import require
from dopd.types import Role

_WAITING, _PREFILLING, _HELD, _RESERVED, _DECODING = (
    SeqStatus.WAITING, SeqStatus.PREFILLING, SeqStatus.HELD, SeqStatus.RESERVED, SeqStatus.DECODING,
)


class SchedulerState:
    """Queues, KV blocks and running sums of one instance (no batch formation).

    ``final_kv_sum`` is the KV (tokens) that the requests here, except held ones, will hold at
    their last step if they run to ``max_tokens``: the sum of ``prompt + max_tokens - 1``.
    """

    def __init__(self, config: SchedulerConfig, blocks: BlockManager,
                 role: Role = Role.MIXED) -> None:
        self.config = config
        self.blocks = blocks
        self.role = role
        self._seqs: dict[int, Seq] = {}
        self._waiting: deque[Seq] | ShortFirstQueue = self._new_queue()
        self._prefilling: list[Seq] = []
        self._running: dict[int, Seq] = {}  # decoding, in admission order (LIFO preemption)
        self._reserved_count = 0
        self._held_count = 0
        self._step_id = 0
        self._run: DecodeRun | None = None
        self._run_blocks = 0
        self._joining: list[Seq] = []
        self._deferred_aborts: list[int] = []
        self.queued_prefill_tokens = 0
        self.queued_prefill_attn = 0
        self.decode_kv_sum = 0
        self.final_kv_sum = 0
        self.preemptions = 0
        self._pending_preempted: list[int] = []

    # ------------------------------------------------------------------ queries
    @property
    def num_decoding(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_prefilling(self) -> int:
        return len(self._prefilling)

    @property
    def num_reserved(self) -> int:
        return self._reserved_count

    @property
    def num_held(self) -> int:
        return self._held_count

    @property
    def num_requests(self) -> int:
        """Requests this scheduler still knows (any status)."""
        return len(self._seqs)

    @property
    def is_idle(self) -> bool:
        """No request in any state: the instance holds no KV and has no work."""
        return not self._seqs

    @property
    def in_decode_run(self) -> bool:
        return self._run is not None

    def has(self, request_id: int) -> bool:
        return request_id in self._seqs

    def status(self, request_id: int) -> SeqStatus | None:
        seq = self._seqs.get(request_id)
        return seq.status if seq is not None else None

    def generated(self, request_id: int) -> int:
        """Output tokens sampled so far by ``request_id`` (0 if unknown)."""
        seq = self._seqs.get(request_id)
        return seq.generated if seq is not None else 0

    def running_ids(self) -> list[int]:
        return list(self._running)

    def can_ever_hold(self, tokens: int) -> bool:
        """Whether ``tokens`` tokens of KV fit this instance's memory at all (watermark kept)."""
        blocks = self.blocks
        return blocks.blocks_for(tokens) <= blocks.num_blocks - blocks.watermark_blocks

    def fits(self, prompt_tokens: int, max_tokens: int) -> bool:
        """Whether a request can ever run here: its full KV (prompt + max_tokens - 1 tokens)
        fits this instance's memory with the watermark kept. Check before adding a request."""
        return self.can_ever_hold(prompt_tokens + max_tokens - 1)

    def has_preempted_waiting(self) -> bool:
        """Whether a request preempted for recompute waits here (it should get memory before
        new remote decodes are reserved)."""
        return bool(self._waiting) and self._waiting[0].generated > 0

    def has_prefill_work(self) -> bool:
        """Whether the next step would contain a prefill chunk."""
        if self._prefilling:
            return True
        return bool(self._waiting) and self._admissible(self._waiting[0])

    def prefill_work_ahead(self, prompt_tokens: int) -> tuple[int, int, int]:
        """(tokens, attention sum, requests) of the queued prefill work that would run before a
        new prompt of ``prompt_tokens`` tokens in this queue order: all of it under FCFS; under
        short-first the prompts in progress, preempted or aged, and the new ones not longer.
        Sums are in the units of :attr:`queued_prefill_tokens` / :attr:`queued_prefill_attn`."""
        return work_ahead(self._waiting, self.queued_prefill_tokens, self.queued_prefill_attn,
                          len(self._prefilling), prompt_tokens)

    # ------------------------------------------------------------------ intake
    def add_request(self, request_id: int, prompt_tokens: int, max_tokens: int,
                    now: float = 0.0, local: bool = False) -> None:
        """Queue a new request for prefill here (in ``config.queue_order``); ``now`` is the
        caller's clock, from which a short-first queue measures its wait. ``local``: decode it
        here too, whatever the role (a PREFILL instance serving whole requests)."""
        require(request_id not in self._seqs, f"request {request_id} is already on this instance")
        require(prompt_tokens >= 1 and max_tokens >= 1, "prompt and max tokens must be >= 1")
        require(self.fits(prompt_tokens, max_tokens),
                f"request {request_id} needs more KV than this instance has")
        seq = Seq(request_id, prompt_tokens, max_tokens)
        seq.queued_s = now
        seq.local = local
        self._seqs[request_id] = seq
        self.final_kv_sum += prompt_tokens + max_tokens - 1
        self._enqueue(seq, front=False)

    def reserve_remote(self, request_id: int, prompt_tokens: int, generated: int,
                       max_tokens: int) -> bool:
        """Reserve KV blocks for a decode whose ``prompt_tokens + generated - 1`` tokens of KV
        will arrive from another instance. False (nothing changed) when there is no room now."""
        require(request_id not in self._seqs, f"request {request_id} is already on this instance")
        require(1 <= generated < max_tokens, "a remote decode needs 1 <= generated < max_tokens")
        require(self.fits(prompt_tokens, max_tokens),
                f"request {request_id} needs more KV than this instance has")
        if self._slots_used() >= self.config.max_num_seqs:
            return False
        kv_len = prompt_tokens + generated - 1
        if not self.blocks.allocate(request_id, kv_len, admission=True):
            return False
        seq = Seq(request_id, prompt_tokens, max_tokens, generated)
        seq.kv_len = kv_len
        seq.status = _RESERVED
        self._seqs[request_id] = seq
        self._reserved_count += 1
        self.final_kv_sum += prompt_tokens + max_tokens - 1
        return True

    def admit_remote(self, request_id: int) -> None:
        """The KV of a reserved remote decode arrived: it joins the decode batch next step."""
        seq = self._seqs.get(request_id)
        require(seq is not None and seq.status == _RESERVED,
                f"request {request_id} is not reserved")
        self._reserved_count -= 1
        if self._run is not None:
            seq.status = _DECODING
            self._joining.append(seq)
            return
        self._join(seq)

    def release(self, request_id: int) -> None:
        """Free the KV of a held (prefilled, transferred) request and forget it."""
        seq = self._seqs.get(request_id)
        require(seq is not None and seq.status == _HELD, f"request {request_id} is not held")
        self._held_count -= 1
        del self._seqs[request_id]
        self.blocks.free(request_id)

    def hold_decode(self, request_id: int) -> int:
        """Stop decoding ``request_id`` here and keep its KV (HELD) for a migration to another
        instance; :meth:`release` frees it once sent. Returns the output tokens sampled so far.
        Not during a decode run (end or cut it first)."""
        seq = self._seqs.get(request_id)
        require(seq is not None and seq.status == _DECODING and request_id in self._running,
                f"request {request_id} is not decoding")
        require(self._run is None, "cannot hold a decode during a decode run")
        del self._running[request_id]
        self.decode_kv_sum -= seq.kv_len
        self.final_kv_sum -= seq.prompt + seq.max_tokens - 1
        seq.status = _HELD
        self._held_count += 1
        return seq.generated

    def abort(self, request_id: int) -> bool:
        """Drop a request in any state and free its KV; False if unknown. A request in an active
        decode run is dropped when the run ends."""
        seq = self._seqs.get(request_id)
        if seq is None:
            return False
        status = seq.status
        if status == _DECODING:
            if seq in self._joining:
                self._joining.remove(seq)
            elif self._run is not None:
                self._deferred_aborts.append(request_id)
                return True
            else:
                del self._running[request_id]
                self.decode_kv_sum -= seq.kv_len
        elif status == _WAITING:
            self._waiting.remove(seq)
            self._unqueue(seq)
        elif status == _PREFILLING:
            self._prefilling.remove(seq)
            self._unqueue(seq)
        elif status == _HELD:
            self._held_count -= 1
        elif status == _RESERVED:
            self._reserved_count -= 1
        if status != _HELD:
            self.final_kv_sum -= seq.prompt + seq.max_tokens - 1
        del self._seqs[request_id]
        self.blocks.free(request_id)
        return True

    def age(self, now: float) -> int:
        """Apply the time bound of a short-first queue at the caller's clock ``now`` (call it
        before :meth:`schedule`); returns the prompts aged. No-op under FCFS."""
        waiting = self._waiting
        if type(waiting) is deque:
            return 0
        assert isinstance(waiting, ShortFirstQueue)
        return waiting.age(now)

    def take_unstarted(self) -> list[tuple[int, int, int]]:
        """Remove and return (request id, prompt tokens, max tokens) of the queued requests whose
        prefill has not started (new ones, not recompute), to route them elsewhere."""
        out: list[tuple[int, int, int]] = []
        keep: deque[Seq] = deque()
        for seq in self._waiting:
            if seq.generated == 0:
                out.append((seq.request_id, seq.prompt, seq.max_tokens))
                self._unqueue(seq)
                self.final_kv_sum -= seq.prompt + seq.max_tokens - 1
                del self._seqs[seq.request_id]
            else:
                keep.append(seq)
        if type(self._waiting) is deque:
            self._waiting = keep
        else:
            self._waiting = self._new_queue()
            for seq in reversed(keep):
                self._waiting.appendleft(seq)
        return out

    # ------------------------------------------------------------------ internals
    def _new_queue(self) -> deque[Seq] | ShortFirstQueue:
        cfg = self.config
        if cfg.queue_order == "short-first":
            return ShortFirstQueue(cfg.aging_s, cfg.max_passes)
        return deque()

    def _slots_used(self) -> int:
        return (len(self._running) + len(self._prefilling) + self._reserved_count
                + len(self._joining))

    def _admissible(self, seq: Seq) -> bool:
        if self._slots_used() >= self.config.max_num_seqs:
            return False
        return self.blocks.can_allocate(seq.request_id, seq.prefill_len, admission=True)

    def _growth_blocks(self, steps: int) -> int:
        bs = self.blocks.block_size
        return sum((s.kv_len + steps - 1) // bs - (s.kv_len - 1) // bs
                   for s in self._running.values())

    def _enqueue(self, seq: Seq, front: bool) -> None:
        seq.status = _WAITING
        seq.computed = 0
        if front:
            self._waiting.appendleft(seq)
        else:
            self._waiting.append(seq)
        self.queued_prefill_tokens += seq.prefill_len
        self.queued_prefill_attn += seq.prefill_len * seq.prefill_len

    def _unqueue(self, seq: Seq) -> None:
        rem = seq.prefill_len - seq.computed
        self.queued_prefill_tokens -= rem
        self.queued_prefill_attn -= rem * seq.prefill_len

    def _join(self, seq: Seq) -> None:
        seq.status = _DECODING
        self._running[seq.request_id] = seq
        self.decode_kv_sum += seq.kv_len

    def _finish(self, seq: Seq, finished: list[tuple[int, FinishReason]],
                reason: FinishReason | None) -> None:
        """Forget a request and free its KV; ``reason`` None means it reached max_tokens."""
        rid = seq.request_id
        if seq.status == _DECODING:
            del self._running[rid]
            self.decode_kv_sum -= seq.kv_len
        self.final_kv_sum -= seq.prompt + seq.max_tokens - 1
        del self._seqs[rid]
        self.blocks.free(rid)
        finished.append((rid, FinishReason.LENGTH if reason is None else reason))

    def check(self) -> None:
        """Assert the bookkeeping invariants (for tests): running sums match the requests,
        every request sits in the one queue its status names, KV blocks are consistent."""
        self.blocks.check()
        queued = [*self._waiting, *self._prefilling]
        assert self.queued_prefill_tokens == sum(s.prefill_len - s.computed for s in queued)
        assert self.queued_prefill_attn == sum((s.prefill_len - s.computed) * s.prefill_len
                                               for s in queued)
        assert self.decode_kv_sum == sum(s.kv_len for s in self._running.values())
        assert self.final_kv_sum == sum(s.prompt + s.max_tokens - 1 for s in self._seqs.values()
                                        if s.status != _HELD)
        if isinstance(self._waiting, ShortFirstQueue):
            self._waiting.check()
        by_status: dict[SeqStatus, int] = {}
        for seq in self._seqs.values():
            by_status[seq.status] = by_status.get(seq.status, 0) + 1
        assert by_status.get(_WAITING, 0) == len(self._waiting)
        assert by_status.get(_PREFILLING, 0) == len(self._prefilling)
        assert by_status.get(_HELD, 0) == self._held_count
        assert by_status.get(_RESERVED, 0) == self._reserved_count
        assert by_status.get(_DECODING, 0) == len(self._running) + len(self._joining)
        assert all(s.status == _WAITING and not self.blocks.has(s.request_id)
                   for s in self._waiting)
        bs = self.blocks.block_size
        if self._run is None:
            for seq in self._running.values():
                assert self.blocks.held(seq.request_id) == -(-seq.kv_len // bs)
        assert self._slots_used() <= self.config.max_num_seqs
