"""P/D hand-off of one request's KV between two engines: the handle, leases and pending imports.

A prefill engine finishes a prompt, samples the first token and keeps the prompt's KV blocks
under a *lease*: they stay allocated until the decode side has fetched them
(:meth:`LLMEngine.release_kv`) or until the lease deadline passes, whichever comes first. It
describes them with a :class:`KVHandle`. A decode engine *accepts* the handle (reserving blocks
for the KV, continuing the request's sampling state), then either receives the KV
(:meth:`LLMEngine.deliver_kv`) and imports it into its own pool, or, when it does not arrive
within its timeout (or the transport reports a failure), recomputes the prompt itself. Nothing
waits forever: every pending import has a deadline on the decode engine's clock.

Moving the KV between the engines is a transport's business (:mod:`dopd.kv`: one interface,
in-process, socket and Ray object-store implementations); this module is the engine's side.

Times are plain floats on the clock of the engine that set them (the engines' injected clocks),
so the hand-off works the same with a wall clock, a virtual clock, or a test's fake clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

from dopd.engine.model import KVPayload, SamplingParams
from dopd.errors import require


@dataclass(frozen=True, slots=True)
class KVHandle:
    """Everything a decode engine needs to continue a request prefilled elsewhere.

    ``prompt_ids`` are the prompt's token ids, whose KV (``num_tokens`` tokens, that is
    ``len(prompt_ids)``) sits in blocks ``block_ids`` of ``block_size`` tokens on engine
    ``source`` until ``lease_deadline`` (on the source's clock). ``first_token`` is the output
    token the prefill sampled. ``params`` and ``seed`` carry the request's sampling so the decode
    side continues the same random stream. ``max_tokens`` is the effective output budget (the
    request's ``max_tokens`` clamped to the context window). ``payload`` optionally carries the KV
    itself (an eager copy); without it the decode side gets the KV through
    :meth:`LLMEngine.deliver_kv`.
    """

    request_id: int
    source: str
    prompt_ids: tuple[int, ...]
    first_token: int
    num_tokens: int
    block_ids: tuple[int, ...]
    block_size: int
    lease_deadline: float
    params: SamplingParams
    seed: int
    max_tokens: int
    payload: KVPayload | None = None

    def __post_init__(self) -> None:
        require(len(self.prompt_ids) >= 1, "a KV handle needs a non-empty prompt")
        require(
            self.num_tokens == len(self.prompt_ids),
            f"KV handle of request {self.request_id}: {self.num_tokens} KV tokens for a prompt "
            f"of {len(self.prompt_ids)}",
        )
        require(
            self.block_size >= 1 and len(self.block_ids) * self.block_size >= self.num_tokens,
            f"KV handle of request {self.request_id}: {len(self.block_ids)} blocks of "
            f"{self.block_size} cannot hold {self.num_tokens} tokens",
        )
        require(
            2 <= self.max_tokens <= self.params.max_tokens,
            f"KV handle of request {self.request_id}: nothing left to decode "
            f"(max_tokens {self.max_tokens})",
        )
        require(
            self.payload is None or self.payload.num_tokens == self.num_tokens,
            f"KV handle of request {self.request_id}: payload holds "
            f"{self.payload.num_tokens if self.payload else 0} tokens, not {self.num_tokens}",
        )

    def with_payload(self, payload: KVPayload) -> KVHandle:
        """A copy of this handle carrying ``payload`` (an eager transfer)."""
        return dataclasses.replace(self, payload=payload)


class LeaseTable:
    """Source side: which prefilled requests hold KV blocks, and until when."""

    __slots__ = ("_deadlines",)

    def __init__(self) -> None:
        self._deadlines: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._deadlines

    def grant(self, request_id: int, deadline: float) -> None:
        require(request_id not in self._deadlines, f"request {request_id} already has a lease")
        self._deadlines[request_id] = deadline

    def valid(self, request_id: int, now: float) -> bool:
        """Whether ``request_id`` holds a lease that has not expired at ``now``."""
        deadline = self._deadlines.get(request_id)
        return deadline is not None and now <= deadline

    def drop(self, request_id: int) -> bool:
        """Forget a lease; False when there was none."""
        return self._deadlines.pop(request_id, None) is not None

    def expired(self, now: float) -> list[int]:
        """Requests whose lease ended before ``now`` (not removed)."""
        return [rid for rid, deadline in self._deadlines.items() if now > deadline]


@dataclass(slots=True)
class PendingImport:
    """Decode side: an accepted handle whose KV is not imported yet.

    ``reserved`` says whether the scheduler holds blocks for it; ``payload`` is the KV once it
    arrived (it may arrive before blocks are free); ``deadline`` is on the decode engine's clock.
    """

    handle: KVHandle
    deadline: float
    reserved: bool = False
    payload: KVPayload | None = None
    failed: bool = field(default=False)


class PendingImports:
    """Decode side: accepted handles in acceptance order (blocks are reserved in that order)."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: dict[int, PendingImport] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._items

    def __iter__(self) -> Iterator[PendingImport]:
        return iter(list(self._items.values()))

    def add(self, item: PendingImport) -> None:
        rid = item.handle.request_id
        require(rid not in self._items, f"request {rid} is already awaiting its KV")
        self._items[rid] = item

    def get(self, request_id: int) -> PendingImport | None:
        return self._items.get(request_id)

    def pop(self, request_id: int) -> PendingImport | None:
        return self._items.pop(request_id, None)
