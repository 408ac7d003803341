"""One-line specs for arrival processes and length samplers (for the CLI and config files).

Syntax: ``KIND`` or ``KIND:KEY=VALUE,KEY=VALUE,...``. ``KIND`` is a registered name
(case-insensitive), each ``KEY`` a parameter of its factory; values are converted to the
parameter's type: numbers (``20``, ``2.5``, ``1e3``), booleans (``true``/``false``/``1``/``0``),
strings (paths, or dataset names of :mod:`dopd.data` such as ``azure-conv`` and ``sharegpt``)
and lists of numbers separated by ``/``. Examples::

    poisson:rate=20
    gamma:rate=20,cv=3
    onoff:rate_on=40,rate_off=2,mean_on_s=10,mean_off_s=30
    step:times=0/60/120,rates=10/20/5
    diurnal:rate=10,amplitude=0.5,period_s=600,phase=0.25
    replay:path=azure-conv,scale=2

    fixed:prompt=512,output=128
    uniform:prompt_min=16,prompt_max=2048,output_min=1,output_max=512
    lognormal:prompt_mean=1000,prompt_cv=1.2,output_mean=200,output_cv=1,max_context=4096
    empirical:path=sharegpt

Every length spec also accepts ``max_context=N`` (wraps the sampler in
:class:`~dopd.workload.lengths.ClipContext`) and ``clip=truncate|reject``. Length-mix shifts
(:class:`~dopd.workload.lengths.MixShift`) compose two samplers and are built in code.
Unknown kinds, unknown or missing keys and unparsable values raise :class:`DopdError`.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from dopd.errors import DopdError, require
from dopd.registry import Registry
from dopd.workload.arrivals import ARRIVALS, ArrivalProcess
from dopd.workload.lengths import LENGTHS, ClipContext, LengthSampler


def split_spec(text: str) -> tuple[str, dict[str, str]]:
    """``"kind:a=1,b=2"`` -> ``("kind", {"a": "1", "b": "2"})``; values stay strings."""
    require(isinstance(text, str) and text.strip() != "", "empty spec")
    kind, _, rest = text.strip().partition(":")
    params: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        require(eq == "=" and key.strip() != "", f"spec {text!r}: expected KEY=VALUE, got {item!r}")
        require(key.strip() not in params, f"spec {text!r}: key {key.strip()!r} given twice")
        params[key.strip()] = value.strip()
    return kind.strip(), params


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _converter(annotation: Any) -> Callable[[str], Any]:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            convert = _converter(inner[0])
            return lambda text: None if text.lower() == "none" else convert(text)
    if origin is tuple and args:
        convert = _converter(args[0])
        return lambda text: tuple(convert(part) for part in text.split("/") if part != "")
    if annotation is bool:
        return _parse_bool
    if annotation in (int, float, str):
        return annotation  # type: ignore[no-any-return]
    raise TypeError(f"no spec converter for {annotation!r}")


def build(registry: Registry[Any], kind: str, params: dict[str, Any]) -> Any:
    """Call the factory registered as ``kind`` with ``params`` (strings are converted)."""
    factory = registry.get(kind)
    hints = typing.get_type_hints(factory)
    signature = inspect.signature(factory)
    accepted = [name for name in signature.parameters if name != "self"]
    kwargs: dict[str, Any] = {}
    for key, value in params.items():
        if key not in accepted:
            raise DopdError(f"{registry.kind} {kind!r} has no parameter {key!r} "
                            f"(accepted: {', '.join(accepted)})")
        if isinstance(value, str) and hints.get(key) is not str:
            try:
                value = _converter(hints[key])(value)
            except ValueError:
                message = f"{registry.kind} {kind!r}: bad value {value!r} for {key!r}"
                raise DopdError(message) from None
        kwargs[key] = value
    missing = [
        name for name in accepted
        if signature.parameters[name].default is inspect.Parameter.empty and name not in kwargs
    ]
    require(not missing, f"{registry.kind} {kind!r} needs {', '.join(missing)}")
    return factory(**kwargs)


def make_arrival(kind: str, **params: Any) -> ArrivalProcess:
    """Arrival process by registered name, e.g. ``make_arrival("gamma", rate=20, cv=3)``."""
    return build(ARRIVALS, kind, params)  # type: ignore[no-any-return]


def parse_arrival(text: str) -> ArrivalProcess:
    """Arrival process from a spec such as ``"gamma:rate=20,cv=3"`` (see the module doc)."""
    kind, params = split_spec(text)
    return make_arrival(kind, **params)


def make_lengths(kind: str, **params: Any) -> LengthSampler:
    """Length sampler by registered name; ``max_context`` / ``clip`` wrap it in ClipContext."""
    max_context = params.pop("max_context", None)
    clip = params.pop("clip", "truncate")
    sampler: LengthSampler = build(LENGTHS, kind, params)
    if max_context is not None:
        try:
            limit = int(max_context)
        except ValueError:
            raise DopdError(f"bad max_context {max_context!r}") from None
        sampler = ClipContext(sampler, limit, str(clip))
    return sampler


def parse_lengths(text: str) -> LengthSampler:
    """Length sampler from a spec such as ``"fixed:prompt=512,output=128"``."""
    kind, params = split_spec(text)
    return make_lengths(kind, **params)
