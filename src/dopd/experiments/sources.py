"""Workloads of a scenario at a load: trace replay or synthetic draws, scaled, cut and clipped.

``scenario_workload(scenario, load, traces_dir, seed)`` is a pure function of its arguments
(traces are cached per process, read-only), so a worker process rebuilds exactly the workload
the parent would.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from dopd.data import is_dataset_name, resolve_dataset
from dopd.errors import DopdError, require
from dopd.experiments.suite import Scenario, SyntheticSource, TraceSource
from dopd.workload import (
    LENGTHS,
    ArrivalProcess,
    Empirical,
    LengthSampler,
    LengthTable,
    MixShift,
    Workload,
    load_lengths,
    load_workload,
    make_arrival,
    parse_lengths,
    synthetic_workload,
)
from dopd.workload.spec import split_spec

RATE_KEYS = ("rate", "rate_on", "rate_off")
"""Arrival-spec parameters that are rates (multiplied by the load's scale); ``rates`` too."""


def resolve(path: str, traces_dir: Path) -> Path:
    """The shipped file of a dataset name (see :mod:`dopd.data`), else ``path`` if absolute,
    else ``path`` under ``traces_dir``; DopdError when no such file."""
    if is_dataset_name(path):
        return resolve_dataset(path)
    p = Path(path)
    full = p if p.is_absolute() else traces_dir / p
    require(full.is_file(), f"trace file not found: {full}")
    return full


@functools.lru_cache(maxsize=8)
def _trace(path: str) -> Workload:
    return load_workload(path)


@functools.lru_cache(maxsize=8)
def _table(path: str) -> LengthTable:
    return load_lengths(path)


def scaled_arrival(spec: str, scale: float) -> ArrivalProcess:
    """The arrival process of ``spec`` with every rate parameter multiplied by ``scale``.

    DopdError when the spec sets no rate (the load axis would not move it) or is malformed.
    """
    kind, params = split_spec(spec)
    values: dict[str, object] = dict(params)
    scaled = False
    for key in RATE_KEYS:
        if key in params:
            values[key] = _number(params[key], spec, key) * scale
            scaled = True
    if "rates" in params:
        parts = [p for p in params["rates"].split("/") if p]
        values["rates"] = tuple(_number(p, spec, "rates") * scale for p in parts)
        scaled = True
    require(scaled, f"arrival spec {spec!r} sets no rate ({', '.join(RATE_KEYS)} or rates)")
    return make_arrival(kind, **values)


def _number(text: str, spec: str, key: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DopdError(f"arrival spec {spec!r}: {key}={text!r} is not a number") from None


def _is_spec(text: str) -> bool:
    kind, _ = split_spec(text)
    return kind in LENGTHS and ":" in text and "=" in text


def _lengths_sampler(text: str, traces_dir: Path) -> tuple[LengthSampler, LengthTable | None]:
    if _is_spec(text):
        return parse_lengths(text), None
    table = _table(str(resolve(text, traces_dir)))
    return Empirical(table), table


def split_by_ratio(table: LengthTable) -> tuple[LengthTable, LengthTable]:
    """The decode-heavy half (prompt/output ratio at or below the median) and the
    prefill-heavy half (above it) of ``table``."""
    ratio = table.prompt_tokens / table.output_tokens
    low = ratio <= np.median(ratio)
    require(bool(low.any()) and bool((~low).any()),
            f"length table {table.name!r} cannot be split by prompt/output ratio")
    return (LengthTable(f"{table.name}-decode-heavy", table.prompt_tokens[low],
                        table.output_tokens[low]),
            LengthTable(f"{table.name}-prefill-heavy", table.prompt_tokens[~low],
                        table.output_tokens[~low]))


def synthetic_lengths(source: SyntheticSource, duration_s: float,
                      traces_dir: Path) -> LengthSampler:
    """The length sampler of ``source`` over a window of ``duration_s``, shift included."""
    base, table = _lengths_sampler(source.lengths, traces_dir)
    if source.shift == "none":
        return base
    if source.shift == "split":
        require(table is not None, f"shift 'split' needs a length table, not {source.lengths!r}")
        assert table is not None
        low, high = split_by_ratio(table)
        a, b = Empirical(low), Empirical(high)
    else:
        a, b = base, _lengths_sampler(source.shift, traces_dir)[0]
    t0, t1, t2, t3 = (f * duration_s for f in source.shift_at)
    return MixShift(MixShift(a, b, t0, t1), a, t2, t3)


def clip_context(workload: Workload, max_context: int) -> Workload:
    """Truncate prompts (outputs first capped at ``max_context - 1``) so that prompt + output
    <= ``max_context``; prefix hashes are dropped as they no longer match the prompts."""
    output = np.minimum(workload.output_tokens, max_context - 1)
    prompt = np.minimum(workload.prompt_tokens, max_context - output)
    return Workload(workload.name, workload.arrival_s, prompt, output)


def raw_workload(scenario: Scenario, load: float, traces_dir: Path, seed: int) -> Workload:
    """The requests of ``scenario`` at ``load`` before context clipping: rate x
    ``scenario.scale * load`` over ``scenario.duration_s`` seconds of arrivals."""
    require(load > 0, f"load must be > 0, got {load}")
    scale = scenario.scale * load
    source = scenario.source
    if isinstance(source, TraceSource):
        base = _trace(str(resolve(source.path, traces_dir)))
        if source.start_s > 0:
            base = base.cut(start_s=source.start_s)
        return base.scale_rate(scale).cut(duration_s=scenario.duration_s)
    arrival = scaled_arrival(source.arrival, scale)
    lengths = synthetic_lengths(source, scenario.duration_s, traces_dir)
    return synthetic_workload(arrival, lengths, duration_s=scenario.duration_s, seed=seed,
                              name=f"{scenario.name}@{load:g}")


def offered_rate(scenario: Scenario, load: float, traces_dir: Path, seed: int) -> float:
    """The arrival rate of ``scenario`` at ``load``: ``load`` times its rate at load 1 (the
    arrival rate of those requests, (n - 1) / span). The load is the time compression of the
    source, so rates at two loads compare exactly as the loads do; the arrival span of the
    requests at each load would not, where the window's end falls in a gap of the trace."""
    return load * _unit_rate(scenario, str(traces_dir), seed)


@functools.lru_cache(maxsize=64)
def _unit_rate(scenario: Scenario, traces_dir: str, seed: int) -> float:
    rate = scenario_workload(scenario, 1.0, Path(traces_dir), seed).rate_rps
    return rate if math.isfinite(rate) else 0.0


def scenario_workload(scenario: Scenario, load: float, traces_dir: Path, seed: int) -> Workload:
    """The requests of ``scenario`` at ``load`` (see ``dopd.experiments.suite``), clipped to
    ``scenario.max_context``. Pure in its arguments; DopdError for missing files or bad specs."""
    workload = raw_workload(scenario, load, traces_dir, seed)
    if scenario.max_context is not None:
        workload = clip_context(workload, scenario.max_context)
    return workload


def clipped_share(scenario: Scenario, load: float, traces_dir: Path, seed: int) -> float:
    """Share of the requests at ``load`` that ``max_context`` truncates (0 when unclipped)."""
    if scenario.max_context is None:
        return 0.0
    raw = raw_workload(scenario, load, traces_dir, seed)
    return float(np.mean(raw.prompt_tokens + raw.output_tokens > scenario.max_context))
