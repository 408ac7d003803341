"""Run configuration: one tree of frozen dataclasses, loaded from TOML plus CLI overrides.

The tree for ``dopd simulate`` (and the commands that reuse it) is :class:`RunConfig`::

    policies = ["colocated", "static:best"]   # top level: what to compare, and the seed
    seed = 0
    [workload]  ... WorkloadConfig            # trace, or synthetic arrivals + lengths
    [cluster]   ... dopd.sim.api.SimConfig    # model, GPU, TP, instances, engine settings
    [slo]       ... dopd.types.SLO            # ttft_s, tpot_s, attainment
    [goodput]   ... GoodputSearch             # max-goodput bisection settings

Precedence: dataclass defaults < TOML file < CLI overrides (dotted keys such as
``"cluster.instances"``). Every value is type-checked on the way in; an unknown key, a wrong type
or an out-of-range value raises :class:`DopdError`. :func:`to_dict`, :func:`dumps_toml` and
:func:`write_resolved` write the resolved tree next to a result so the run can be repeated with
``--config``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dopd.errors import DopdError, require
from dopd.sim.api import SimConfig
from dopd.types import SLO
from dopd.workload.arrivals import ARRIVALS
from dopd.workload.spec import split_spec

T = TypeVar("T")

DEFAULT_SYNTHETIC_REQUESTS = 500
"""Requests of a synthetic workload when neither ``requests`` nor ``duration_s`` is set."""


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """Where requests come from.

    ``trace`` replays a trace file (arrival times and lengths). Otherwise arrivals are synthetic:
    ``arrival`` is an arrival-process name or spec of ``dopd.workload.spec`` (``"poisson"``,
    ``"gamma:cv=3"``, ``"onoff:rate_on=40,..."``); ``rate`` (req/s) and ``cv`` (inter-arrival
    coefficient of variation) fill in the process's ``rate`` / ``cv`` parameters where the spec
    does not set them. Lengths are sampled from ``lengths`` (a trace file, lengths-only or not, or
    a length-sampler spec such as ``"lognormal:prompt_mean=1000,..."``) or, when None, from the
    built-in statistics. ``rate_scale`` multiplies the arrival rate (a trace is time-compressed);
    then ``duration_s`` / ``requests`` cut the workload. A synthetic workload with neither gets
    :data:`DEFAULT_SYNTHETIC_REQUESTS` requests.
    """

    trace: str | None = None
    lengths: str | None = None
    arrival: str = "poisson"
    rate: float = 60.0
    cv: float | None = None
    rate_scale: float = 1.0
    duration_s: float | None = None
    requests: int | None = None

    def __post_init__(self) -> None:
        require(
            self.trace is None or self.lengths is None,
            "give either a trace or a length file, not both",
        )
        kind, _params = split_spec(self.arrival)
        ARRIVALS.get(kind)  # unknown names raise DopdError listing the known ones
        require(_positive(self.rate), f"arrival rate must be > 0 req/s, got {self.rate}")
        require(self.cv is None or _positive(self.cv), f"arrival CV must be > 0, got {self.cv}")
        require(_positive(self.rate_scale), f"rate scale must be > 0, got {self.rate_scale}")
        require(
            self.duration_s is None or _positive(self.duration_s),
            f"duration must be > 0 s, got {self.duration_s}",
        )
        require(
            self.requests is None or self.requests >= 1,
            f"number of requests must be >= 1, got {self.requests}",
        )

    @property
    def synthetic(self) -> bool:
        """True when arrival times are generated rather than read from a trace."""
        return self.trace is None


@dataclass(frozen=True, slots=True)
class GoodputSearch:
    """Max-goodput bisection over the rate scale (see ``dopd.bench.metrics.max_goodput``).

    The attainment target is ``SLO.attainment``. ``lo`` is the smallest rate scale tried (the
    policy is infeasible when it misses the target there); ``hi`` is the first guess of a scale
    that misses it (doubled while it does not); ``rel_tol`` is the relative bracket width at
    which the bisection stops; ``max_runs`` bounds the simulations per policy.
    """

    enabled: bool = False
    lo: float = 0.05
    hi: float = 1.0
    rel_tol: float = 0.02
    max_runs: int = 30

    def __post_init__(self) -> None:
        require(_positive(self.lo) and _positive(self.hi), "goodput search bounds must be > 0")
        require(self.lo < self.hi, f"goodput search needs lo < hi, got {self.lo} >= {self.hi}")
        require(0 < self.rel_tol < 1, f"goodput rel_tol must be in (0, 1), got {self.rel_tol}")
        require(self.max_runs >= 2, f"goodput max_runs must be >= 2, got {self.max_runs}")


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything one ``dopd simulate`` invocation needs besides where to write results."""

    policies: tuple[str, ...] = ("colocated", "static:best")
    seed: int = 0
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    cluster: SimConfig = field(default_factory=SimConfig)
    slo: SLO = field(default_factory=lambda: SLO(ttft_s=0.5, tpot_s=0.1, attainment=0.9))
    goodput: GoodputSearch = field(default_factory=GoodputSearch)

    def __post_init__(self) -> None:
        require(len(self.policies) >= 1, "at least one policy is needed")
        require(all(p.strip() for p in self.policies), "empty policy name")
        require(
            len(set(self.policies)) == len(self.policies),
            f"a policy is given twice: {', '.join(self.policies)}",
        )
        require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")


def _positive(x: float) -> bool:
    return x > 0 and math.isfinite(x)


# --------------------------------------------------------------------------------------------
# Typed construction from plain data


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data`` (nested mappings for nested dataclasses).

    Missing keys take the dataclass default; unknown keys and values of the wrong type raise
    :class:`DopdError` naming ``where.key``.
    """
    require(isinstance(data, Mapping), f"{where}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    require(
        not unknown,
        f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})",
    )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        require(len(inner) == 1, f"{where}: unsupported type {tp}")
        return _coerce(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_mapping(tp, value, where)
    if origin is tuple:
        require(isinstance(value, list | tuple), f"{where}: expected a list, got {value!r}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        require(isinstance(value, bool), f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        require(ok, f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        require(ok, f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        require(isinstance(value, str), f"{where}: expected a string, got {value!r}")
        return value
    raise DopdError(f"{where}: unsupported type {tp}")


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data view of a config dataclass tree (tuples become lists), JSON-serialisable."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    out = plain(obj)
    require(isinstance(out, dict), "to_dict needs a dataclass instance")
    return out


# --------------------------------------------------------------------------------------------
# Overrides and files


def apply_overrides(config: T, overrides: Mapping[str, Any]) -> T:
    """Return ``config`` with dotted-key ``overrides`` applied, e.g. ``{"cluster.tp": 2}``.

    Values are type-checked like file values; the result is re-validated as a whole.
    """
    data = to_dict(config)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node: Any = data
        for part in parts[:-1]:
            require(
                isinstance(node, dict) and isinstance(node.get(part), dict),
                f"unknown config section {dotted!r}",
            )
            node = node[part]
        require(isinstance(node, dict) and parts[-1] in node, f"unknown config key {dotted!r}")
        node[parts[-1]] = list(value) if isinstance(value, tuple) else value
    return from_mapping(type(config), data)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; relative ``trace`` / ``lengths`` / ``calibration`` paths are made
    relative to the file's directory when such a file exists there."""
    p = Path(path)
    require(p.is_file(), f"config file not found: {p}")
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise DopdError(f"config file {p} is not valid TOML: {exc}") from None
    path_keys = (("workload", "trace"), ("workload", "lengths"), ("cluster", "calibration"),
                 ("cluster", "profile"))
    for section, key in path_keys:
        table = data.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str):
            candidate = p.parent / table[key]
            if not Path(table[key]).is_absolute() and candidate.exists():
                table[key] = str(candidate)
    return data


def load_run_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> RunConfig:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides`` (dotted keys)."""
    config = from_mapping(RunConfig, load_toml(path), where=str(path)) if path else RunConfig()
    return apply_overrides(config, overrides or {})


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Serialise a plain config tree (scalars, lists of scalars, nested tables) as TOML.

    None values are left out (TOML has no null; loading the file gives the default back).
    """
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []

    def emit(prefix: str, table: Mapping[str, Any]) -> None:
        for key, value in table.items():
            if isinstance(value, Mapping):
                tables.append((f"{prefix}{key}", value))
            elif value is not None:
                lines.append(f"{key} = {_toml_value(value)}")

    emit("", data)
    while tables:
        name, table = tables.pop(0)
        lines.append(f"\n[{name}]")
        nested: list[tuple[str, Mapping[str, Any]]] = []
        for key, value in table.items():
            if isinstance(value, Mapping):
                nested.append((f"{name}.{key}", value))
            elif value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        tables[:0] = nested
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        require(math.isfinite(value), f"cannot write non-finite number {value} to TOML")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise DopdError(f"cannot write {type(value).__name__} to TOML")


def write_resolved(config: Any, directory: str | Path, stem: str = "config") -> tuple[Path, Path]:
    """Write the resolved config tree as ``<stem>.json`` and ``<stem>.toml`` in ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    data = to_dict(config)
    json_path, toml_path = d / f"{stem}.json", d / f"{stem}.toml"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    toml_path.write_text(dumps_toml(data))
    return json_path, toml_path
