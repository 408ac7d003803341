"""An instance's load from vLLM's ``/metrics`` (Prometheus text format).

:func:`parse_samples` reads the exposition text into ``{name: [(labels, value), ...]}``;
:class:`MetricsReading` keeps what the front end uses of one scrape (requests running and
waiting, KV cache usage and size, token and preemption counters, the decode step latency's sum
and count), and :meth:`MetricsReading.recent_step_s` turns two readings into the mean
inter-token latency between them (a decode step's wall time as vLLM measured it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of ``text`` by metric name (comments and malformed lines skipped)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        out.setdefault(m.group(1), []).append((labels, value))
    return out


def _total(samples: dict[str, list[tuple[dict[str, str], float]]], *names: str) -> float:
    """The sum over labels of the first of ``names`` present (0 when none is)."""
    for name in names:
        if name in samples:
            return sum(v for _, v in samples[name])
    return 0.0


@dataclass(frozen=True, slots=True)
class MetricsReading:
    """What one ``/metrics`` scrape of a vLLM instance says (counters are totals so far)."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    kv_blocks: int = 0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    preemptions: float = 0.0
    itl_sum_s: float = 0.0
    itl_count: float = 0.0

    @classmethod
    def parse(cls, text: str) -> MetricsReading:
        """The reading of one scrape's text (metrics a version lacks read 0)."""
        s = parse_samples(text)
        blocks = 0
        for labels, _ in s.get("vllm:cache_config_info", []):
            try:
                blocks = max(blocks, int(float(labels.get("num_gpu_blocks", "0") or 0)))
            except ValueError:
                continue
        return cls(
            running=int(_total(s, "vllm:num_requests_running")),
            waiting=int(_total(s, "vllm:num_requests_waiting")),
            kv_usage=_total(s, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
            kv_blocks=blocks,
            prompt_tokens=_total(s, "vllm:prompt_tokens_total"),
            generation_tokens=_total(s, "vllm:generation_tokens_total"),
            preemptions=_total(s, "vllm:num_preemptions_total"),
            itl_sum_s=_total(s, "vllm:inter_token_latency_seconds_sum",
                             "vllm:time_per_output_token_seconds_sum"),
            itl_count=_total(s, "vllm:inter_token_latency_seconds_count",
                             "vllm:time_per_output_token_seconds_count"),
        )

    def recent_step_s(self, before: MetricsReading | None) -> float:
        """Mean inter-token latency since ``before`` (0 when no token was counted between)."""
        if before is None:
            return 0.0
        n = self.itl_count - before.itl_count
        return max(0.0, (self.itl_sum_s - before.itl_sum_s) / n) if n > 0 else 0.0
