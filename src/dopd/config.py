"""Typed configuration from plain data: frozen dataclasses built from TOML plus CLI overrides.

:func:`from_mapping` builds a dataclass tree from nested mappings, type-checking every value (an
unknown key, a wrong type or an out-of-range value raises :class:`DopdError`);
:func:`apply_overrides` applies dotted keys (``"cluster.instances"``); :func:`to_dict`,
:func:`dumps_toml` and :func:`write_resolved` write a resolved tree next to a result so the run
can be repeated with ``--config``. The trees themselves live with their commands:
``dopd.sim.run_config.RunConfig`` (``dopd simulate`` and the commands that reuse it) and
``dopd.serve.serve_config.ServeConfig``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from dopd.errors import DopdError, require

T = TypeVar("T")

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
