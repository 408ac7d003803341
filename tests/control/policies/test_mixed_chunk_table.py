"""``dopd``'s per-step MIXED budget (``mixtok=step``, the default) and the chunk-capped TPOT
bound of the colocated predictor (``chunkbound=on``): the table is the largest chunk within the
step target on the policy's latency belief, the bound caps the predicted TPOT, and both reach
the schedulers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from policy_workloads import SLO_, constant

from dopd import perf
from dopd.control.flow.instances import scheduler_config
from dopd.control.policies.base import ClusterPolicy, PolicyContext, make_policy
from dopd.control.policies.dopd_policy import DopdPolicy
from dopd.control.policies.mixed_budget import (
    CONTEXT,
    DECODES,
    TABLE_FLOOR,
    mixed_chunk_table,
    mixed_prefill_tokens,
    mixed_step_bound,
)
from dopd.control.policies.options import DopdOptions
from dopd.control.ratio import InstanceModel, WorkloadStats
from dopd.control.ratio.colocated import predict_colocated
from dopd.engine import SchedulerConfig
from dopd.errors import DopdError
from dopd.sim.api import SimConfig
from dopd.sim.simulation import build_cluster
from dopd.types import SLO

LATENCY = perf.build_latency_model("llama-3-8b", "a100-80gb")


def _step(tokens: int, decodes: int, context: int, prefix: int | None = None) -> float:
    attn = 2 * tokens * tokens if prefix is None else tokens * (prefix + tokens)
    return LATENCY.step_time(tokens, attn, 1 if tokens else 0, decodes, decodes * context)


@pytest.mark.parametrize("target", [0.02, 0.05, 0.2])
def test_each_entry_is_the_largest_chunk_within_the_target(target: float) -> None:
    table = mixed_chunk_table(LATENCY, target, 8192)
    assert table.target_s == target and table.floor == TABLE_FLOOR
    for i, decodes in enumerate(table.counts):
        for j, context in enumerate(table.contexts):
            for k, prefix in enumerate(table.prefixes):
                tokens = table.tokens[i][j][k]
                if tokens > 0:
                    assert _step(tokens, decodes, context, prefix) <= target
                if tokens < 8192 - decodes and _step(0, decodes, context) <= target:
                    assert _step(tokens + 1, decodes, context, prefix) > target
                if _step(0, decodes, context) > target:
                    assert tokens == 0


def test_the_table_shrinks_with_decodes_context_and_depth_and_grows_with_the_target() -> None:
    table = mixed_chunk_table(LATENCY, 0.05, 8192)
    cube = np.array(table.tokens)
    for axis in range(3):
        assert (np.diff(cube, axis=axis) <= 0).all()
    assert cube[0, 0, -1] < cube[0, 0, 0]  # a chunk deep in a long prompt attends over it all
    looser = np.array(mixed_chunk_table(LATENCY, 0.1, 8192).tokens)
    assert (looser >= cube).all() and (looser > cube).any()
    assert mixed_chunk_table(LATENCY, 10.0, 512).tokens[0][0][0] == 511
    with pytest.raises(DopdError):
        mixed_chunk_table(LATENCY, 0.0, 8192)


def test_the_step_bound_adds_the_chunk_or_holds_the_target() -> None:
    assert mixed_step_bound(LATENCY, None, None) is None
    base = _step(0, DECODES, CONTEXT)
    capped = mixed_step_bound(LATENCY, 512, None)
    assert capped is not None
    assert capped(0.03) == pytest.approx(0.03 + _step(512, DECODES, CONTEXT) - base)
    table = mixed_chunk_table(LATENCY, 0.05, 8192)
    both = mixed_step_bound(LATENCY, 512, table)
    assert both is not None
    assert both(0.01) <= 0.05  # decodes well within the target: the table holds the step there
    floor = _step(TABLE_FLOOR, DECODES, CONTEXT) - base
    assert both(0.08) == pytest.approx(0.08 + floor)  # decodes alone beyond it: the floor chunk


def test_a_chunk_cap_bounds_the_colocated_tpot_of_long_prompts() -> None:
    """Long prompts, short outputs: the time-sharing model stretches every decode step by the
    prefill share, but with prompt chunks capped no step is longer than the decodes and one
    chunk, so the prediction drops to that bound and the TPOT SLO holds."""
    inst = InstanceModel.from_cluster_config(SimConfig(instances=8))
    stats = WorkloadStats.from_moments(4.0, 12000.0, 1.0, 40.0, 1.0)
    slo = 0.06
    plain = predict_colocated(inst, stats, 8, slo)
    assert plain.stable and plain.tpot_q > slo and plain.attainment < 0.9
    bound = mixed_step_bound(LATENCY, 512, None)
    assert bound is not None
    capped = predict_colocated(inst, stats, 8, slo, mixed_step=bound)
    one_step = bound(float(inst.decode_step(np.array([1.0]), 12020.0)[0]))
    assert one_step <= capped.tpot_q < plain.tpot_q and capped.tpot_q <= slo
    assert capped.attainment == 1.0 and capped.tpot_mean <= capped.tpot_q
    # a loose bound never raises the prediction
    loose = predict_colocated(inst, stats, 8, slo, mixed_step=lambda t: t + 10.0)
    assert loose.tpot_q == plain.tpot_q and loose.attainment == plain.attainment
    # overloaded prefill stays overloaded
    over = predict_colocated(inst, stats, 8, slo, rate=1e4, mixed_step=bound)
    assert not over.stable and math.isinf(over.tpot_q)


def _context(tpot: float = 0.05) -> PolicyContext:
    return PolicyContext(config=SimConfig(instances=4), latency=LATENCY, slo=SLO(0.5, tpot),
                         seed=0, kv_blocks=10_000)


def test_options_and_defaults() -> None:
    default = DopdOptions.parse("")
    assert (default.mixed_tokens, default.mixed_share, default.mixed_step_share,
            default.chunk_bound) == ("step", 1.0, 0.9, True)
    assert DopdOptions.parse("mixtok=auto").mixed_share == 0.5
    opts = DopdOptions.parse("mixtok=step:mixstep=0.8:chunkbound=off")
    assert (opts.mixed_step_share, opts.chunk_bound) == (0.8, False)
    for spec in ("mixstep=0", "mixstep=x", "chunkbound=maybe", "nohybrid:chunkbound=on",
                 "nohybrid:mixstep=0.5"):
        with pytest.raises(DopdError):
            DopdOptions.parse(spec)


def test_the_policy_builds_the_table_and_the_bound() -> None:
    policy = make_policy("dopd", _context(0.05))
    assert isinstance(policy, DopdPolicy) and policy.hybrid is not None
    table = policy.mixed_chunk_table
    assert table == mixed_chunk_table(LATENCY, 0.9 * 0.05, 8192)
    assert policy.mixed_prefill_tokens == mixed_prefill_tokens(LATENCY, 0.05, 8192, share=1.0)
    assert policy.hybrid.mixed_step is not None
    config = scheduler_config(policy, SchedulerConfig())
    assert config.mixed_chunk_table == table
    assert config.mixed_prefill_tokens == policy.mixed_prefill_tokens
    half = make_policy("dopd:mixstep=0.5", _context(0.05))
    assert isinstance(half, ClusterPolicy) and half.mixed_chunk_table is not None
    assert half.mixed_chunk_table.target_s == pytest.approx(0.025)
    for spec in ("dopd:mixtok=auto", "dopd:mixtok=300", "dopd:nohybrid", "colocated"):
        other = make_policy(spec, _context())
        assert isinstance(other, ClusterPolicy) and other.mixed_chunk_table is None
    off = make_policy("dopd:chunkbound=off", _context())
    assert isinstance(off, DopdPolicy) and off.hybrid is not None
    assert off.hybrid.mixed_step is None and off.mixed_chunk_table is not None


def test_the_simulator_gives_every_instance_the_table() -> None:
    w = constant(5.0, (200, 1200), (20, 60), duration_s=10.0)
    cluster = build_cluster(w, SimConfig(instances=4), "dopd", SLO_)
    tables = {inst.sched.config.mixed_chunk_table for inst in cluster.instances}
    assert len(tables) == 1 and None not in tables
