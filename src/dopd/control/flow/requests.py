"""Request flow: where a request may be placed, and the order of a hand-off's KV reservation.

Placement (:func:`placement_pools`): instances take prompts when ACTIVE and not DECODE, and
decodes when ACTIVE and not PREFILL. With both kinds the router decides (a prompt on a PREFILL
instance is handed off after its prefill; on a MIXED or DECODE one it is served in place). With
one kind only, a request is served whole where it can be: on DECODE instances alone (a
decode-only cluster) it is prefilled and decoded in place (``colocated``), on PREFILL instances
alone (every decode instance switching or down) it is decoded on its prefill instance too
(``local``) rather than stranded.

Hand-off (:class:`HandoffQueue`): a prefilled request waits in its decode instance's queue
until that instance reserves KV blocks for it (in arrival order; none while the instance has
preempted requests of its own waiting for memory), and only then does its KV transfer start. So
a transfer never waits for memory at its destination, and the time a request waits for decode
memory is part of its TTFT, as the ratio solver assumes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from dopd.types import InstanceState, Role


class Placeable(Protocol):
    """An instance as placement reads it."""

    @property
    def role(self) -> Role: ...
    @property
    def state(self) -> InstanceState: ...


T = TypeVar("T")
M = TypeVar("M", bound=Placeable)


def takes_prompts(m: Placeable) -> bool:
    return m.state == InstanceState.ACTIVE and m.role != Role.DECODE


def takes_decodes(m: Placeable) -> bool:
    return m.state == InstanceState.ACTIVE and m.role != Role.PREFILL


class Whole(StrEnum):
    """How a request is served when only one kind of instance is there."""

    COLOCATED = "colocated"
    """On a DECODE instance: it prefills and decodes the request."""
    LOCAL = "local"
    """On a PREFILL instance: it decodes the request too (no hand-off)."""


@dataclass(frozen=True, slots=True)
class Pools(Generic[M]):
    """Placement candidates: ``prefill`` and ``decode`` (for the router), or, when only one kind
    is there, ``whole`` (every request is served whole on one of them, as ``how`` says)."""

    prefill: list[M]
    decode: list[M]
    whole: list[M] | None = None
    how: Whole | None = None

    @property
    def empty(self) -> bool:
        return not self.prefill and not self.decode


def placement_pools(members: Iterable[M]) -> Pools[M]:
    """The candidates of a new (or re-placed) request among ``members`` (see the module
    docstring)."""
    prefill: list[M] = []
    decode: list[M] = []
    for m in members:
        if takes_prompts(m):
            prefill.append(m)
        if takes_decodes(m):
            decode.append(m)
    if prefill and not decode:
        return Pools(prefill, decode, prefill, Whole.LOCAL)
    if decode and not prefill:
        return Pools(prefill, decode, decode, Whole.COLOCATED)
    return Pools(prefill, decode)


class HandoffQueue(Generic[T]):
    """Hand-offs waiting for KV memory at one decode instance, in arrival order, with the
    tokens of KV they will need (:attr:`tokens`, which routers read as pending work)."""

    __slots__ = ("_items", "tokens")

    def __init__(self) -> None:
        self._items: deque[tuple[T, int]] = deque()
        self.tokens = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def push(self, item: T, kv_tokens: int) -> None:
        self._items.append((item, kv_tokens))
        self.tokens += kv_tokens

    def take_all(self) -> list[T]:
        """Remove every waiting hand-off (its instance drains: they go elsewhere)."""
        items = [item for item, _ in self._items]
        self._items.clear()
        self.tokens = 0
        return items

    def admit(self, reserve: Callable[[T], bool], blocked: bool = False) -> list[T]:
        """Reserve memory for the waiting hand-offs in order while ``reserve(item)`` succeeds
        (none when ``blocked``: the instance's own preempted requests come first); returns
        those reserved, whose transfers may start now."""
        out: list[T] = []
        if blocked:
            return out
        items = self._items
        while items:
            item, kv_tokens = items[0]
            if not reserve(item):
                break
            items.popleft()
            self.tokens -= kv_tokens
            out.append(item)
        return out
