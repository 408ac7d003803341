"""Reports of a load run: the JSON record (``dopd simulate``'s fields), CSVs and plots.

The record has every field of a ``dopd simulate`` policy record, so a live run and a simulation
of the same workload line up key by key; fields a client cannot know are null: ``switches``,
``kv_bytes_moved``, ``events``, and ``gpu_seconds`` / ``goodput_rps_per_gpu`` unless the number
of GPUs behind the server is given. ``sim_end_s`` is the end of the run on its own clock (the
last stream's end). Client-side extras: ``unfinished``, ``mean_{ttft,tpot,e2e}``,
``duration_s`` (the goodput denominator), ``offered_rate_rps``, ``capped``, ``max_in_flight``,
``dispatch_lag_p99_s`` / ``dispatch_lag_max_s`` (how late the generator issued requests: above
a few ms the client, not the server, limits the measurement), ``cap_wait_max_s``,
``short_outputs`` (finished with fewer tokens than asked), ``prompt_tokens_ratio`` (mean of the
server-reported prompt tokens over the target; None when the server reports none) and
``errors`` (count per failure kind, e.g. ``{"HTTP 500": 3, "timeout after 60 s": 1}``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from dopd.bench.loadgen import LoadResult
from dopd.bench.plots import plot_latency_cdfs, save_figure
from dopd.bench.report import (
    request_columns,
    safe_name,
    summary_record,
    write_columns_csv,
    write_json,
    write_timeline_csv,
)
from dopd.config import write_resolved
from dopd.metrics.summary import MetricsSummary
from dopd.sim.run_config import RunConfig
from dopd.types import SLO, RequestState
from dopd.workload import Workload

EXTRA_COLUMNS: tuple[str, ...] = (
    "dispatch_s", "send_s", "done_s", "requested_tokens", "chunks", "server_prompt_tokens",
    "server_output_tokens", "http_status",
)
"""Client-only columns appended to ``dopd.bench.report.REQUEST_COLUMNS`` in the request CSV."""


def _max(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else None


def bench_record(
    result: LoadResult,
    summary: MetricsSummary,
    offered_rate_rps: float,
    gpus: int | None = None,
) -> dict[str, Any]:
    """The JSON record of one load run (fields in the module doc)."""
    s = summary
    record = summary_record(result.policy, s, gpus)
    finished = result.state == int(RequestState.FINISHED)
    lag = result.dispatch_s - result.arrival_s
    reported = result.server_prompt_tokens >= 0
    ratio = (float(np.mean(result.server_prompt_tokens[reported] / result.prompt_tokens[reported]))
             if reported.any() else None)
    record.update(
        gpu_seconds=None if gpus is None else gpus * result.end_s,
        switches=None,
        kv_bytes_moved=None,
        sim_end_s=result.end_s,
        events=None,
        wall_s=result.wall_s,
        unfinished=s.unfinished,
        mean_ttft=s.mean_ttft,
        mean_tpot=s.mean_tpot,
        mean_e2e=s.mean_e2e,
        duration_s=s.duration_s,
        offered_rate_rps=offered_rate_rps,
        capped=result.capped,
        max_in_flight=result.max_in_flight,
        dispatch_lag_p99_s=float(np.percentile(lag, 99)),
        dispatch_lag_max_s=float(lag.max()),
        cap_wait_max_s=_max(result.send_s - result.dispatch_s),
        short_outputs=int(np.count_nonzero(finished & (result.output_tokens
                                                       < result.requested_tokens))),
        prompt_tokens_ratio=ratio,
        errors=dict(sorted(Counter(r.split(":")[0] for r in result.reason.values()).items())),
    )
    return record


def bench_columns(result: LoadResult) -> dict[str, np.ndarray]:
    """Per-request CSV columns: ``REQUEST_COLUMNS`` then :data:`EXTRA_COLUMNS`."""
    columns = request_columns(result)  # type: ignore[arg-type]
    columns.update({name: np.asarray(getattr(result, name)) for name in EXTRA_COLUMNS})
    return columns


def bench_timeline_figure(result: LoadResult, slo: SLO | None = None) -> Figure:
    """Three panels over the run's time: load (arrivals per second; requests waiting for their
    first token and decoding), TTFT (s) and TPOT (ms) of each request at its arrival (SLOs
    dashed, failed requests as red crosses at the top of the TTFT panel)."""
    tl = result.timeline
    fig, (ax_load, ax_ttft, ax_tpot) = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True,
                                                    layout="constrained")
    lines = ax_load.plot(tl.time_s, tl.arrivals_rps, color="#7f7f7f", linewidth=1.6,
                         label="arrivals (req/s, left)")
    ax_load.set_ylabel("arrivals (req/s)")
    ax_load.set_ylim(bottom=0)
    ax_count = ax_load.twinx()
    first, arrival = result.first_token_s, result.arrival_s
    t = np.asarray(tl.time_s)[:, None]
    done = np.where(np.isnan(result.done_s), np.inf, result.done_s)
    sent = np.where(np.isnan(result.send_s), np.inf, result.send_s)
    ft = np.where(np.isnan(first), np.inf, first)
    lines += ax_count.plot(tl.time_s, ((sent <= t) & (t < np.minimum(ft, done))).sum(axis=1),
                           color="#1f77b4", linestyle="--", marker="s", markersize=3,
                           label="waiting for first token (right)")
    lines += ax_count.plot(tl.time_s, tl.running_decodes, color="#ff7f0e", linestyle="-.",
                           marker="^", markersize=3, label="decoding (right)")
    ax_count.set_ylabel("requests")
    ax_count.set_ylim(bottom=0)
    ax_count.yaxis.get_major_locator().set_params(integer=True)
    ax_load.legend(lines, [str(line.get_label()) for line in lines], loc="upper left",
                   fontsize="small", framealpha=0.9)
    ax_load.set_title("load")
    failed = result.state != int(RequestState.FINISHED)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(result.output_tokens > 1,
                        (result.finish_s - first) / np.maximum(result.output_tokens - 1, 1),
                        np.nan)
    ttft = first - arrival
    if failed.any():
        top = float(np.nanmax(np.append(ttft, slo.ttft_s if slo else 0.0)))
        ax_ttft.scatter(arrival[failed], np.full(int(failed.sum()), top), marker="x",
                        color="#d62728", label=f"failed ({int(failed.sum())})")
    for ax, values, name, unit, target in (
        (ax_ttft, ttft, "TTFT", "s", slo.ttft_s if slo else None),
        (ax_tpot, 1000.0 * tpot, "TPOT", "ms", 1000.0 * slo.tpot_s if slo else None),
    ):
        ok = np.isfinite(values)
        ax.scatter(arrival[ok], values[ok], s=8, color="#1f77b4", alpha=0.6,
                   label="one request")
        if target:
            ax.axhline(target, color="k", linestyle="--", linewidth=1,
                       label=f"SLO {target:g} {unit}")
        ax.legend(loc="upper right", fontsize="small", framealpha=0.9)
        ax.set_ylabel(f"{name} ({unit})")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    ax_ttft.set_title("time to first token, per request at its arrival")
    ax_tpot.set_title("time per output token, per request at its arrival")
    ax_tpot.set_xlabel("arrival time (s since the run's start)")
    fig.suptitle(f"{result.policy}: load and latency over time (client view)")
    return fig


def plot_bench_timeline(result: LoadResult, path: str | Path, slo: SLO | None = None) -> Path:
    """Write :func:`bench_timeline_figure` to ``path``."""
    return save_figure(bench_timeline_figure(result, slo), path)


def write_bench_outputs(
    out: str | Path,
    cfg: RunConfig,
    workload: Workload,
    result: LoadResult,
    records: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> list[Path]:
    """Write a load run under ``out``; returns the paths written.

    ``results.json`` (the records, as ``--json``), ``config.json`` / ``config.toml`` (workload,
    SLO and seed: reusable as ``dopd simulate --config``), ``bench.json`` (``settings``: URL,
    model, endpoint, ...; never the API key), ``workload.json``, ``requests_<label>.csv``
    (:func:`bench_columns`), ``timeline_<label>.csv``, and the plots ``latency_cdf.png`` (as
    ``dopd simulate``'s) and ``timeline.png`` (:func:`plot_bench_timeline`).
    """
    d = Path(out)
    name = safe_name(result.policy)
    paths = [write_json(d / "results.json", records), *write_resolved(cfg, d)]
    paths.append(write_json(d / "bench.json", settings))
    paths.append(write_json(d / "workload.json", workload.summary()))
    paths.append(write_columns_csv(d / f"requests_{name}.csv", bench_columns(result)))
    paths.append(write_timeline_csv(d / f"timeline_{name}.csv", result.timeline))
    as_sim: dict[str, Any] = {result.policy: result}  # duck-types SimResult's columns
    paths.append(plot_latency_cdfs(as_sim, d / "latency_cdf.png", cfg.slo))
    paths.append(plot_bench_timeline(result, d / "timeline.png", cfg.slo))
    return paths
