"""Per-request state of the real engine, and what the engine reports about requests.

:class:`RequestRecord` is the mutable book of one request inside one :class:`LLMEngine`: its
token ids, sampling parameters and random generator, and the incremental detokenizer. The model
runner appends sampled tokens to it; the engine turns the changes into :class:`RequestOutput`
deltas. :class:`Completion` is a finished request as :meth:`LLMEngine.generate` returns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dopd.engine.kv_handoff import KVHandle
from dopd.engine.model import SamplingParams, Tokenizer, truncate_at_stop
from dopd.engine.plan import FinishReason
from dopd.types import RequestState

# prompt tokens decoded ahead of the output so the first output token keeps its leading space
_DETOK_CONTEXT = 5
_REPLACEMENT = "\ufffd"
# tokens after which text is emitted even if it ends in an incomplete character
_MAX_PENDING = 8


class IncrementalDetokenizer:
    """Text of a growing token sequence, one delta per call, never splitting a UTF-8 character.

    Decodes only a short window (the tokens since the last emitted character, plus the ones
    before it for context), so the cost per token does not grow with the output length.
    """

    __slots__ = ("_ids", "_prefix", "_read", "tokenizer")

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self._ids = list(prompt_ids[-_DETOK_CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)

    def add(self, token_ids: list[int], flush: bool = False) -> str:
        """Append ``token_ids``; return the text they complete (may be empty).

        Text ending in an incomplete character is held back, unless ``flush`` (the sequence
        ends) or :data:`_MAX_PENDING` tokens are pending (they are not valid text anyway).
        """
        self._ids.extend(token_ids)
        decode = self.tokenizer.decode
        before = decode(self._ids[self._prefix : self._read])
        after = decode(self._ids[self._prefix :])
        pending = len(self._ids) - self._read
        if not flush and pending < _MAX_PENDING and (
            len(after) <= len(before) or after.endswith(_REPLACEMENT)
        ):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        if self._prefix > 64:  # keep the id list short
            drop = self._prefix
            del self._ids[:drop]
            self._prefix -= drop
            self._read -= drop
        return after[len(before) :]


@dataclass(slots=True)
class RequestRecord:
    """One request inside one engine (mutable; not a boundary object).

    The sequence's tokens are ``prompt_ids + output_ids``. ``max_tokens`` is the effective
    output budget. ``generator`` is None for greedy requests. ``text`` is the detokenized output
    so far and ``text_sent`` how much of it was reported; ``emitted`` counts reported tokens.
    ``remote`` marks a request whose prompt was prefilled on another engine; ``recomputed`` one
    whose KV did not arrive so this engine prefilled it itself. ``state`` is where the request
    is on this engine, set as it moves (:meth:`advance`): WAITING when queued, PREFILLING once a
    prompt chunk ran, TRANSFERRING while its KV is handed off (held here under a lease after a
    prefill, or awaited here after an accept), DECODING once it decodes, FINISHED / ABORTED.
    """

    request_id: int
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    seed: int
    generator: torch.Generator | None
    detok: IncrementalDetokenizer | None
    output_ids: list[int] = field(default_factory=list)
    emitted: int = 0
    text: str = ""
    text_sent: int = 0
    remote: bool = False
    recomputed: bool = False
    held: bool = False
    state: RequestState = RequestState.WAITING

    def advance(self, state: RequestState) -> None:
        """Move to ``state`` unless the request is further along already (states are ordered:
        a recomputed or preempted request keeps its later state)."""
        if state > self.state:
            self.state = state

    def tokens(self) -> list[int]:
        """The whole sequence: prompt then output ids (a new list)."""
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def take_delta(
        self, finish: FinishReason | None, flush: bool = False
    ) -> tuple[tuple[int, ...], str]:
        """The tokens and text not reported yet, and mark them reported.

        With stop strings, the last ``max(len(stop)) - 1`` characters are held back until the
        request finishes (or ``flush``: it leaves this engine), so text that turns out to start a
        stop string is never sent; the final text is cut before the stop string (it is not
        returned, as in OpenAI's API).
        """
        new_ids = tuple(self.output_ids[self.emitted :])
        self.emitted = len(self.output_ids)
        if self.detok is None:
            return new_ids, ""
        if new_ids or finish is not None or flush:
            self.text += self.detok.add(list(new_ids), flush=finish is not None or flush)
        stop = self.params.stop
        if finish is not None:
            if stop:
                self.text = truncate_at_stop(self.text, stop)
            end = len(self.text)
        elif stop and not flush:
            end = max(self.text_sent, len(self.text) - (max(len(s) for s in stop) - 1))
        else:
            end = len(self.text)
        delta = self.text[self.text_sent : end]
        self.text_sent = end
        return new_ids, delta


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """What one engine step produced for one request.

    ``new_token_ids`` / ``new_text`` are the delta since the last output of this request (text is
    empty when the engine does not detokenize). ``finished`` is set once, with ``finish_reason``.
    On a prefill engine, a request whose prompt is done carries ``kv_handle`` (its KV is held
    under a lease for a decode engine) and is not finished here. ``state`` is the request's
    state on this engine after the step.
    """

    request_id: int
    new_token_ids: tuple[int, ...]
    new_text: str
    num_prompt_tokens: int
    num_output_tokens: int
    finished: bool = False
    finish_reason: FinishReason | None = None
    kv_handle: KVHandle | None = None
    state: RequestState = RequestState.DECODING


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished request: prompt, generated token ids and text, and why it ended."""

    request_id: int
    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason | None
