"""Blocking and streaming conveniences over an engine's :meth:`step` loop, as a base class of
:class:`~dopd.engine.llm_engine.LLMEngine` (which supplies ``step``, ``add_request`` and the
request bookkeeping these read)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence, Sized
from typing import Any, Protocol

from dopd.engine.model import SamplingParams
from dopd.engine.plan import FinishReason
from dopd.engine.request_state import Completion, RequestOutput
from dopd.errors import require
from dopd.types import Role

Prompt = str | Sequence[int]


class SteppedEngine(Protocol):
    """What these conveniences need of the engine that inherits them."""

    role: Role
    records: Mapping[int, Any]
    pending: Sized
    last_plan: object | None

    def has_unfinished(self) -> bool: ...

    def step(self) -> list[RequestOutput]: ...

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None) -> int: ...

    def iter_outputs(self) -> Iterator[RequestOutput]: ...


class BlockingCalls:
    """``iter_outputs``, ``generate`` and ``stream`` for one caller driving the engine."""

    def iter_outputs(self: SteppedEngine) -> Iterator[RequestOutput]:
        """Step until no request is unfinished, yielding every output (held KV is not waited
        for; pending KV imports are, until they arrive or time out)."""
        while self.has_unfinished():
            outputs = self.step()
            if not outputs and self.last_plan is None and not len(self.pending):
                return  # nothing can progress (cannot happen with consistent bookkeeping)
            yield from outputs

    def generate(
        self: SteppedEngine, prompts: Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Run ``prompts`` (batched together, with the engine's other requests) to completion.

        ``params`` is one for all or one per prompt. Needs a DECODE or MIXED engine.
        """
        require(self.role != Role.PREFILL, "a prefill engine hands requests off; use step()")
        if params is None or isinstance(params, SamplingParams):
            per = [params] * len(prompts)
        else:
            per = list(params)
            require(len(per) == len(prompts), f"{len(prompts)} prompts but {len(per)} params")
        rids = [self.add_request(p, sp) for p, sp in zip(prompts, per, strict=True)]
        prompt_ids = {rid: tuple(self.records[rid].prompt_ids) for rid in rids}
        tokens: dict[int, list[int]] = {rid: [] for rid in rids}
        texts: dict[int, list[str]] = {rid: [] for rid in rids}
        reasons: dict[int, FinishReason | None] = {}
        for out in self.iter_outputs():
            if out.request_id in tokens:
                tokens[out.request_id].extend(out.new_token_ids)
                texts[out.request_id].append(out.new_text)
                if out.finished:
                    reasons[out.request_id] = out.finish_reason
                    if len(reasons) == len(rids):
                        break
        return [Completion(rid, prompt_ids[rid], tuple(tokens[rid]), "".join(texts[rid]),
                           reasons.get(rid)) for rid in rids]

    def stream(self: SteppedEngine, prompt: Prompt,
               params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Run one prompt on an otherwise idle engine, yielding its outputs as they come."""
        require(self.role != Role.PREFILL, "a prefill engine hands requests off; use step()")
        require(not self.records, "stream() needs an idle engine; use step() for several requests")
        rid = self.add_request(prompt, params)
        for out in self.iter_outputs():
            if out.request_id == rid:
                yield out
                if out.finished:
                    return
