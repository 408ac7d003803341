"""The real engine of one instance: scheduler + KV block manager + PyTorch runner + tokenizer.

:class:`LLMEngine` serves requests with continuous batching: :meth:`LLMEngine.add_request` queues
a prompt (text or token ids) with its :class:`~dopd.engine.model.SamplingParams`;
:meth:`LLMEngine.step` runs one scheduler step (prefill chunks and decodes of every running
request in one forward) and returns the token/text deltas and finishes of that step;
:meth:`LLMEngine.generate` and :meth:`LLMEngine.stream` are the blocking and streaming
conveniences (:mod:`dopd.engine.blocking_calls`). The scheduler is the same object the simulator
uses; only the runner differs.

P/D roles (see :mod:`dopd.engine.kv_handoff`): a PREFILL engine's step reports a prompt it
completed with a :class:`KVHandle` (the KV stays under a lease); :meth:`fetch_kv` copies that KV
out and :meth:`release_kv` frees it. A DECODE (or MIXED) engine takes the request with
:meth:`accept_remote`, reserves its blocks in acceptance order when memory allows (the shared
hand-off order, :class:`~dopd.control.flow.requests.HandoffQueue`: memory first, then the
transfer), gets the KV through :meth:`deliver_kv` (or in the handle), and recomputes the prompt
itself when the KV does not come within ``kv_timeout_s`` of its reservation or :meth:`fail_kv`
is called.

The engine holds no global state and reads time only from its injected ``clock`` (leases, KV
timeouts, queue aging), so it runs the same under a wall clock or a test's fake clock. It is not
thread-safe: one caller drives it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dopd.engine.block_manager import BlockManager
from dopd.engine.blocking_calls import BlockingCalls, Prompt
from dopd.engine.engine_options import EngineOptions, EngineStats
from dopd.engine.kv_handoff import KVHandle, LeaseTable, PendingImport, PendingImports
from dopd.engine.latency_runner import StepRunner
from dopd.engine.model import (
    KVPayload,
    LoadedModel,
    SamplingParams,
    export_kv,
    import_kv,
    load_model,
    make_generator,
)
from dopd.engine.plan import StepPlan
from dopd.engine.request_state import (
    IncrementalDetokenizer,
    RequestOutput,
    RequestRecord,
)
from dopd.engine.scheduler import Scheduler
from dopd.engine.torch_runner import TorchRunner
from dopd.errors import require
from dopd.types import RequestState, Role


class LLMEngine(BlockingCalls):
    """One engine instance over a loaded model (see the module docstring for the contract)."""

    def __init__(
        self,
        loaded: LoadedModel,
        options: EngineOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "engine",
        runner: Callable[[LLMEngine], StepRunner] | None = None,
    ) -> None:
        """``runner`` builds the engine's runner from the engine (its ``records`` and
        ``tokenizer``); None: the PyTorch runner of the loaded model."""
        opts = options if options is not None else EngineOptions()
        if opts.threads is not None:
            torch.set_num_threads(opts.threads)
        self.options = opts
        self.name = name
        self.clock = clock
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        cfg = self.model.config
        self.max_model_len = opts.max_model_len or cfg.max_position_embeddings
        num_blocks = opts.num_blocks
        if num_blocks is None:
            elem = torch.empty(0, dtype=self.model.dtype).element_size()
            per_block = 2 * cfg.num_layers * opts.block_size * cfg.num_kv_heads * cfg.head_dim
            num_blocks = max(1, int(opts.kv_cache_mb * 2**20) // (per_block * elem))
        self.cache = self.model.make_cache(num_blocks, opts.block_size, zeroed=not opts.lazy_kv)
        self.blocks = BlockManager(num_blocks, opts.block_size, opts.scheduler.watermark)
        self.scheduler = Scheduler(opts.scheduler, self.blocks, opts.role)
        self.records: dict[int, RequestRecord] = {}
        self.runner: StepRunner = runner(self) if runner is not None else TorchRunner(
            self.model,
            self.cache,
            self.records,
            eos_token_ids=cfg.eos_token_ids,
            tokenizer=self.tokenizer,
        )
        self.leases = LeaseTable()
        self.pending = PendingImports()
        self.last_plan: StepPlan | None = None
        self._stats = EngineStats()
        self._next_id = 0

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        options: EngineOptions | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "engine",
    ) -> LLMEngine:
        """An engine over a built-in model (``dopd-tiny``) or an HF checkpoint folder."""
        return cls(load_model(name_or_path, device=device, dtype=dtype), options, clock=clock,
                   name=name)

    # ------------------------------------------------------------------ queries
    @property
    def role(self) -> Role:
        return self.scheduler.role

    @role.setter
    def role(self, role: Role) -> None:
        """Switch roles (the manager drains the engine first): applies from the next step."""
        require(isinstance(role, Role), f"role must be a Role, got {role!r}")
        self.scheduler.role = role

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the engine's counters."""
        return dataclasses.replace(self._stats, preemptions=self.scheduler.preemptions)

    @property
    def num_unfinished(self) -> int:
        """Requests that will still produce tokens here (held prefilled KV excluded)."""
        return len(self.records) - len(self.leases)

    def has_unfinished(self) -> bool:
        return self.num_unfinished > 0

    def request_state(self, request_id: int) -> RequestState | None:
        """Where request ``request_id`` is on this engine (None: not here, or done)."""
        rec = self.records.get(request_id)
        return None if rec is None else rec.state

    # ------------------------------------------------------------------ intake
    def add_request(
        self, prompt: Prompt, params: SamplingParams | None = None, *,
        request_id: int | None = None, local: bool = False,
    ) -> int:
        """Queue ``prompt`` (text, encoded with the model's tokenizer, or token ids); returns the
        request id (``request_id`` if given, else the next free one).

        The output budget is ``params.max_tokens`` clamped to the context window. Raises
        DopdError for an empty prompt, token ids out of the vocabulary, a prompt that leaves no
        room in the context window or in KV memory, text or stop strings without a tokenizer, or
        a request id already in use. ``local``: decode it here even on a PREFILL engine (no
        KV hand-off; the front end's fallback while no decode instance is up).
        """
        params = params if params is not None else SamplingParams()
        ids = self._encode(prompt)
        max_tokens = self._budget(len(ids), params)
        rid = self._claim_id(request_id)
        self.scheduler.add_request(rid, len(ids), max_tokens, self.clock(), local)
        self.records[rid] = self._record(rid, ids, params, max_tokens)
        return rid

    def abort(self, request_id: int) -> bool:
        """Drop a request in any state here and free its KV; False when unknown."""
        if request_id not in self.records:
            return False
        self.scheduler.abort(request_id)
        self.leases.drop(request_id)
        self.pending.pop(request_id)
        self.records.pop(request_id).advance(RequestState.ABORTED)
        return True

    # ------------------------------------------------------------------ stepping
    def step(self) -> list[RequestOutput]:
        """Run one step; return one output per request that sampled a token in it."""
        now = self.clock()
        self._expire_leases(now)
        self._advance_imports(now)
        sched = self.scheduler
        sched.age(now)
        plan = sched.schedule()
        self.last_plan = plan
        if plan is None:
            if self.model.staging is not None:
                self.model.staging.reset()  # idle: drop the decode batch's KV copies
            return []
        for chunk in plan.prefill:
            self.records[chunk.request_id].advance(RequestState.PREFILLING)
        result = self.runner.execute(plan)
        outcome = sched.complete(plan, result)
        st = self._stats
        st.steps += 1
        st.prefill_tokens += plan.prefill_new_tokens
        st.decode_tokens += len(plan.decode_ids)
        st.max_decode_batch = max(st.max_decode_batch, len(plan.decode_ids))
        st.busy_s += result.duration_s
        finished = dict(outcome.finished)
        prefilled = set(outcome.prefilled)
        outputs = []
        for rid in plan.sampling_ids:
            rec = self.records[rid]
            if rid in finished:
                reason = finished[rid]
                ids, text = rec.take_delta(reason)
                del self.records[rid]
                rec.advance(RequestState.FINISHED)
                outputs.append(RequestOutput(rid, ids, text, len(rec.prompt_ids),
                                             len(rec.output_ids), True, reason,
                                             state=rec.state))
            elif rid in prefilled:
                handle = self._lease(rec, self.clock())
                ids, text = rec.take_delta(None, flush=True)
                rec.advance(RequestState.TRANSFERRING)
                outputs.append(RequestOutput(rid, ids, text, len(rec.prompt_ids),
                                             len(rec.output_ids), kv_handle=handle,
                                             state=rec.state))
            else:
                ids, text = rec.take_delta(None)
                rec.advance(RequestState.DECODING)
                outputs.append(RequestOutput(rid, ids, text, len(rec.prompt_ids),
                                             len(rec.output_ids), state=rec.state))
        return outputs

    # ------------------------------------------------------------------ KV hand-off: source
    def fetch_kv(self, handle: KVHandle) -> KVPayload:
        """Copy out the KV a handle of this engine names; DopdError once its lease ended."""
        rid = handle.request_id
        require(handle.source == self.name, f"KV handle of {handle.source!r}, not {self.name!r}")
        require(self.leases.valid(rid, self.clock()),
                f"the KV lease of request {rid} expired or was released")
        require(tuple(self.blocks.table(rid)) == handle.block_ids,
                f"KV handle of request {rid} names blocks it does not hold")
        return export_kv(self.cache, handle.block_ids, handle.num_tokens)

    def release_kv(self, request_id: int) -> bool:
        """Free a prefilled request's KV (after the transfer); False when it holds no lease."""
        if not self.leases.drop(request_id):
            return False
        self.scheduler.release(request_id)
        del self.records[request_id]
        return True

    # ------------------------------------------------------------------ KV hand-off: target
    def accept_remote(self, handle: KVHandle) -> int:
        """Take over a request prefilled elsewhere; returns its request id (the handle's).

        Blocks for its KV are reserved as soon as they are free; the KV is imported once it
        arrived (in the handle, or by :meth:`deliver_kv`). Raises DopdError when the id is in
        use here, or the request cannot fit this engine's context window or KV memory.
        """
        rid = handle.request_id
        n = handle.num_tokens
        require(n < self.max_model_len, f"request {rid}: prompt of {n} tokens does not fit the "
                f"context window of {self.max_model_len} tokens")
        max_tokens = min(handle.max_tokens, self.max_model_len - n)
        require(max_tokens >= 2, f"request {rid}: no room to decode in the context window")
        require(self.scheduler.fits(n, max_tokens),
                f"request {rid} needs more KV than this engine has")
        rid = self._claim_id(rid)
        rec = self._record(rid, list(handle.prompt_ids), handle.params, max_tokens, handle.seed)
        rec.remote = True
        rec.state = RequestState.TRANSFERRING
        rec.output_ids.append(handle.first_token)
        rec.emitted = 1
        if rec.generator is not None:
            torch.rand(1, generator=rec.generator)  # the draw the prefill used for token 1
        if rec.detok is not None:
            rec.text = rec.detok.add([handle.first_token])
            rec.text_sent = len(rec.text)
        self.records[rid] = rec
        now = self.clock()
        self.pending.add(PendingImport(handle, now + self.options.kv_timeout_s,
                                       payload=handle.payload))
        self._advance_imports(now)
        return rid

    def deliver_kv(self, request_id: int, payload: KVPayload) -> bool:
        """The KV of an accepted request arrived; True when it will be imported. KV that is not
        awaited (late: the prompt is being recomputed, or the request is gone) is ignored
        (False); KV of the wrong size raises DopdError."""
        item = self.pending.get(request_id)
        if item is None or item.failed:
            return False
        require(payload.num_tokens == item.handle.num_tokens,
                f"request {request_id}: KV of {payload.num_tokens} tokens, expected "
                f"{item.handle.num_tokens}")
        item.payload = payload
        self._advance_imports(self.clock())
        return True

    def fail_kv(self, request_id: int) -> None:
        """The transport gave up on an accepted request's KV: recompute its prompt here."""
        item = self.pending.get(request_id)
        if item is not None and item.payload is None:
            item.failed = True
            self._advance_imports(self.clock())

    # ------------------------------------------------------------------ internals
    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            require(self.tokenizer is not None, "text prompts need a model with a tokenizer")
            assert self.tokenizer is not None
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
        require(len(ids) > 0, "the prompt is empty")
        vocab = self.model.config.vocab_size
        require(min(ids) >= 0 and max(ids) < vocab,
                f"prompt token id out of the vocabulary [0, {vocab})")
        return ids

    def _budget(self, n: int, params: SamplingParams) -> int:
        require(n < self.max_model_len, f"prompt of {n} tokens is longer than the context window "
                f"({self.max_model_len} tokens, output included)")
        require(not params.stop or self.tokenizer is not None, "stop strings need a tokenizer")
        return min(params.max_tokens, self.max_model_len - n)

    def _claim_id(self, request_id: int | None) -> int:
        if request_id is None:
            while self._next_id in self.records:
                self._next_id += 1
            request_id = self._next_id
            self._next_id += 1
        require(isinstance(request_id, int) and request_id >= 0,
                f"request id must be an int >= 0, got {request_id!r}")
        require(request_id not in self.records, f"request {request_id} is already on this engine")
        return request_id

    def _record(self, rid: int, ids: list[int], params: SamplingParams, max_tokens: int,
                seed: int | None = None) -> RequestRecord:
        if seed is None:
            seed = params.seed
        if seed is None:  # derived from (engine seed, request id): reproducible, distinct
            seed = int(np.random.SeedSequence([self.options.seed, rid]).generate_state(1)[0])
        generator = None if params.greedy else make_generator(seed)
        tok = self.tokenizer if self.options.detokenize else None
        detok = IncrementalDetokenizer(tok, ids) if tok is not None else None
        return RequestRecord(rid, ids, params, max_tokens, seed, generator, detok)

    def _lease(self, rec: RequestRecord, now: float) -> KVHandle:
        rid = rec.request_id
        deadline = now + self.options.kv_lease_s
        self.leases.grant(rid, deadline)
        rec.held = True
        self._stats.kv_exports += 1
        return KVHandle(rid, self.name, tuple(rec.prompt_ids), rec.output_ids[0],
                        len(rec.prompt_ids), tuple(self.blocks.table(rid)), self.blocks.block_size,
                        deadline, rec.params, rec.seed, rec.max_tokens)

    def _expire_leases(self, now: float) -> None:
        for rid in self.leases.expired(now):
            self.release_kv(rid)
            self._stats.lease_expiries += 1

    def _advance_imports(self, now: float) -> None:
        """Reserve blocks for (in acceptance order: one that does not fit stops those after
        it), import, or give up on (recompute) the pending remote decodes. The KV timeout runs
        from the reservation: waiting for memory is not a failed transfer."""
        sched = self.scheduler
        blocked = sched.has_preempted_waiting()
        for item in self.pending:
            rid = item.handle.request_id
            rec = self.records[rid]
            n = len(rec.prompt_ids)
            if item.payload is not None or not (
                    item.failed or (item.reserved and now > item.deadline)):
                if not item.reserved and not blocked:
                    item.reserved = sched.reserve_remote(rid, n, 1, rec.max_tokens)
                    if item.reserved:
                        item.deadline = now + self.options.kv_timeout_s
                    else:
                        blocked = True
                if item.reserved and item.payload is not None:
                    import_kv(self.cache, self.blocks.table(rid), item.payload)
                    sched.admit_remote(rid)
                    rec.advance(RequestState.DECODING)
                    self.pending.pop(rid)
                    self._stats.kv_imports += 1
                continue
            if item.reserved:
                sched.abort(rid)
            # prefill the prompt and the first token here; the scheduler counts the rest
            sched.add_request(rid, n + 1, rec.max_tokens - 1, now)
            rec.recomputed = True
            self.pending.pop(rid)
            self._stats.kv_recomputes += 1
