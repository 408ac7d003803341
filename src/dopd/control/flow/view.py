"""The one builder of the :class:`~dopd.control.policies.base.ClusterView` a policy sees.

Each driver exposes its instances as :class:`InstanceSignals` (the simulator from its
scheduler's sums, the live controller from the workers' latest stats); :func:`build_view`
turns them into the policy's snapshot the same way in both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from dopd.control.policies.base import ClusterView, InstanceView
from dopd.types import InstanceState, Role


class InstanceSignals(Protocol):
    """What a policy's view reads of one instance (see
    :class:`~dopd.control.policies.base.InstanceView` for the meaning of each value)."""

    @property
    def instance_id(self) -> int: ...
    @property
    def role(self) -> Role: ...
    @property
    def state(self) -> InstanceState: ...
    @property
    def target_role(self) -> Role | None: ...
    @property
    def queued_prefill_tokens(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    @property
    def prefilling(self) -> int: ...
    @property
    def decode_batch(self) -> int: ...
    @property
    def decode_ctx_sum(self) -> int: ...
    @property
    def pending_decodes(self) -> int: ...
    @property
    def kv_used_blocks(self) -> int: ...
    @property
    def kv_total_blocks(self) -> int: ...
    @property
    def recent_step_s(self) -> float: ...
    @property
    def steps(self) -> int: ...


def instance_view(s: InstanceSignals) -> InstanceView:
    """The frozen view of one instance (a cache of unknown size counts as one block)."""
    return InstanceView(
        int(s.instance_id), s.role, s.state, s.target_role, int(s.queued_prefill_tokens),
        int(s.waiting), int(s.prefilling), int(s.decode_batch), int(s.decode_ctx_sum),
        int(s.pending_decodes), int(s.kv_used_blocks), max(1, int(s.kv_total_blocks)),
        float(s.recent_step_s), int(s.steps))


def build_view(now: float, instances: Iterable[InstanceSignals], budget: int, arrived: int,
               finished: int) -> ClusterView:
    """The policy's snapshot at ``now``: every instance (stopped ones too) in id order,
    the instance ``budget``, requests ``arrived`` and ``finished`` (ended) so far."""
    views = sorted((instance_view(s) for s in instances), key=lambda v: v.instance_id)
    return ClusterView(now, tuple(views), budget, arrived, finished)
