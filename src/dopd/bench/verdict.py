"""A short verdict on a comparison: who wins on goodput and SLO attainment, by how much, who
meets the attainment target, and what share each policy rejected.

Works on the result records of ``dopd simulate`` (``dopd.cli.simulate_cmd.policy_record``): it
reads ``policy``, ``requests``, ``rejected``, ``attainment``, ``goodput_rps``, ``ttft_p90`` and
``tpot_p90`` (and ``max_goodput_rps`` where present). A latency field may be None or a string
(a percentile that falls on a missed request); such values are left out of the text rather
than compared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dopd.bench.plot_style import is_proposed

TIE = 0.02
"""Goodput ratios within this relative margin of 1 count as a tie."""


@dataclass(frozen=True, slots=True)
class Standing:
    """One policy's numbers in a comparison; ``name`` is the resolved policy name (e.g.
    ``static:best(7:1)``), ``spec`` the policy as given."""

    spec: str
    name: str
    requests: int
    rejected: int
    attainment: float
    goodput_rps: float
    ttft_p90: Any
    tpot_p90: Any

    @property
    def rejected_share(self) -> float:
        """Rejected requests over all requests (0 for an empty run)."""
        return self.rejected / self.requests if self.requests else 0.0


def standings(records: Mapping[str, Mapping[str, Any]]) -> list[Standing]:
    """The :class:`Standing` of every record, in the records' order."""
    return [Standing(spec=spec, name=str(rec.get("policy") or spec),
                     requests=int(rec.get("requests") or 0),
                     rejected=int(rec.get("rejected") or 0),
                     attainment=float(rec.get("attainment") or 0.0),
                     goodput_rps=float(rec.get("goodput_rps") or 0.0),
                     ttft_p90=rec.get("ttft_p90"), tpot_p90=rec.get("tpot_p90"))
            for spec, rec in records.items()]


def verdict(records: Mapping[str, Mapping[str, Any]], target: float) -> tuple[str, ...]:
    """Three to five lines: the winner on goodput against the runner-up (``dopd`` against the
    best other policy when ``dopd`` ran); both one's attainment; who meets the attainment
    ``target`` (a fraction); their P90 TTFT and TPOT (where both are numbers); the rejected
    shares (when any policy rejected); their max goodput (with ``--max-goodput``). Empty for a
    single policy."""
    rows = standings(records)
    if len(rows) < 2:
        return ()
    ours = next((r for r in rows if is_proposed(r.spec) or is_proposed(r.name)), None)
    if ours is not None:
        rest = [r for r in rows if r is not ours]
        rival = max(rest, key=_rank)
        label = "the best baseline" if len(rest) > 1 else "the baseline"
        first, second = ours, rival
    else:
        ordered = sorted(rows, key=_rank, reverse=True)
        first, second, label = ordered[0], ordered[1], "the runner-up"
    lines = [_headline(first, second, label), _attainment(first, second),
             _target_line(rows, target)]
    latency = _latency_line(first, second)
    if latency:
        lines.append(latency)
    rejected = _rejected_line(rows)
    if rejected:
        lines.append(rejected)
    searched = _max_goodput_line(records, first.spec, second.spec)
    if searched:
        lines.append(searched)
    return tuple(lines)


def _max_goodput_line(records: Mapping[str, Mapping[str, Any]], a: str, b: str) -> str:
    """The two policies' max goodput and its ratio, when both were searched."""
    x, y = (_number(records[k].get("max_goodput_rps")) for k in (a, b))
    if x is None or y is None:
        return ""
    names = [str(records[k].get("policy") or k) for k in (a, b)]
    ratio = f" ({x / y:.2f}x)" if y > 0 else ""
    return (f"Max goodput at the attainment target: {names[0]} {x:.2f} req/s, "
            f"{names[1]} {y:.2f}{ratio}.")


def _rank(r: Standing) -> tuple[float, float]:
    return (r.goodput_rps, r.attainment)


def _headline(a: Standing, b: Standing, label: str) -> str:
    return "Verdict: " + _outcome(a, b, label)


def _outcome(a: Standing, b: Standing, label: str) -> str:
    vs = f"{b.name}, {label}"
    if b.goodput_rps <= 0:
        if a.goodput_rps <= 0:
            return f"no policy met its SLOs on any request ({a.name}, {b.name})."
        return f"{a.name} wins. Goodput {a.goodput_rps:.2f} req/s; {vs}, met no SLO at all."
    ratio = a.goodput_rps / b.goodput_rps
    if abs(ratio - 1.0) <= TIE:
        return (f"{a.name} and {vs}, tie. Goodput {a.goodput_rps:.2f} against "
                f"{b.goodput_rps:.2f} req/s ({ratio:.2f}x).")
    if ratio > 1.0:
        return (f"{a.name} wins. Goodput {a.goodput_rps:.2f} req/s against "
                f"{b.goodput_rps:.2f} for {vs} ({ratio:.2f}x).")
    return (f"{b.name} wins. Goodput {b.goodput_rps:.2f} req/s against "
            f"{a.goodput_rps:.2f} for {a.name} ({a.name} at {ratio:.2f}x).")


def _attainment(a: Standing, b: Standing) -> str:
    return (f"Attainment (requests meeting both SLOs): {a.name} {100 * a.attainment:.1f}%, "
            f"{b.name} {100 * b.attainment:.1f}%.")


def _latency_line(a: Standing, b: Standing) -> str:
    parts = []
    for name, fmt, x, y in (("TTFT", _seconds, a.ttft_p90, b.ttft_p90),
                            ("TPOT", _millis, a.tpot_p90, b.tpot_p90)):
        fx, fy = fmt(x), fmt(y)
        if fx and fy:
            parts.append(f"P90 {name}: {a.name} {fx}, {b.name} {fy}.")
    return " ".join(parts)


def _target_line(rows: Sequence[Standing], target: float) -> str:
    meet = [r.name for r in rows if r.attainment >= target]
    goal = f"the {100 * target:g}% target"
    if not meet:
        return f"No policy meets {goal}: lower the load (--rate-scale) or add instances."
    if len(meet) == len(rows):
        return f"Every policy meets {goal}: raise the load (--rate-scale) to see them part."
    if len(meet) == 1:
        return f"Only {meet[0]} meets {goal}."
    miss = [r.name for r in rows if r.name not in meet]
    return (f"{_join(meet)} meet {goal}; {_join(miss)} "
            f"{'does' if len(miss) == 1 else 'do'} not.")


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _rejected_line(rows: Sequence[Standing]) -> str:
    shares = [f"{r.name} {100 * r.rejected_share:.1f}% ({r.rejected} of {r.requests})"
              for r in rows if r.rejected]
    if not shares:
        return ""
    none = [r.name for r in rows if not r.rejected]
    tail = f"; {_join(none)} none" if none else ""
    return ("Rejected at admission (counted as misses): " + ", ".join(shares) + tail + ".")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _seconds(value: Any) -> str:
    v = _number(value)
    return "" if v is None else f"{v:.2f} s"


def _millis(value: Any) -> str:
    v = _number(value)
    return "" if v is None else f"{1000 * v:.0f} ms"
