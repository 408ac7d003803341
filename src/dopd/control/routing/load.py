"""What a router reads of an instance: the :class:`InstanceLoad` protocol.

Two drivers implement it: the simulator's instance (whose ``sched`` is the engine's
:class:`~dopd.engine.state.SchedulerState`, the running sums of the scheduler itself) and the
live front end's :class:`~dopd.serve.live_routing.InstanceBook` (the same sums kept from the
messages it sends and hears). Routers and :mod:`dopd.control.routing.predict` read instances
through these protocols only, so both drivers place requests with the same code. Every value is
O(1) to read except :meth:`QueueLoad.prefill_work_ahead` (a bisection over a short-first queue).
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Protocol

from dopd.types import Role


class BlockLoad(Protocol):
    """KV blocks of one instance."""

    @property
    def num_blocks(self) -> int: ...

    @property
    def free_blocks(self) -> int: ...


class QueueLoad(Protocol):
    """An instance's scheduler sums: queued prefill work, decode batch and context, KV.

    ``queued_prefill_tokens`` / ``queued_prefill_attn``: prompt tokens still to prefill and
    their attention sum (sum of squared lengths); ``num_waiting`` / ``num_prefilling``: prompts
    queued and in progress; ``num_decoding`` and ``decode_kv_sum``: the decode batch and its
    context tokens; ``num_reserved``: hand-offs with KV reserved, not yet decoding;
    ``final_kv_sum``: KV tokens the requests here will hold at their last step;
    ``num_requests``: requests known in any state; ``blocks``: the KV cache."""

    @property
    def role(self) -> Role: ...

    @property
    def queued_prefill_tokens(self) -> int: ...

    @property
    def queued_prefill_attn(self) -> int: ...

    @property
    def num_waiting(self) -> int: ...

    @property
    def num_prefilling(self) -> int: ...

    @property
    def num_decoding(self) -> int: ...

    @property
    def num_reserved(self) -> int: ...

    @property
    def num_requests(self) -> int: ...

    @property
    def decode_kv_sum(self) -> int: ...

    @property
    def final_kv_sum(self) -> int: ...

    @property
    def blocks(self) -> BlockLoad: ...

    def prefill_work_ahead(self, prompt_tokens: int) -> tuple[int, int, int]:
        """(tokens, attention sum, prompts) queued that a new prompt of ``prompt_tokens``
        tokens would wait for in this instance's queue order
        (:func:`dopd.engine.waitqueue.work_ahead`)."""
        ...


class InstanceLoad(Protocol):
    """One instance as a router sees it: its scheduler sums (``sched``), the KV hand-offs
    queued for it (``pending``, of which routers read only the length, and their prompt tokens
    ``pending_tokens``), whether a step runs (``busy``) and when it is expected to end
    (:meth:`free_at`)."""

    @property
    def instance_id(self) -> int: ...

    @property
    def busy(self) -> bool: ...

    @property
    def sched(self) -> QueueLoad: ...

    @property
    def pending(self) -> Sized: ...

    @property
    def pending_tokens(self) -> int: ...

    def free_at(self, now: float) -> float:
        """When the step in progress is expected to end (``now`` when idle)."""
        ...
