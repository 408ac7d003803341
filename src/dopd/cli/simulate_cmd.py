"""``dopd simulate``: one workload through one or more cluster policies, compared side by side.

The work is in :func:`simulate` (config + workload -> per-policy results, no I/O), so the
experiment harness can reuse it; :func:`run` adds the argparse front end, the table, the files.

The JSON (``--json``, ``results.json``) is an object keyed by policy spec as given, each value:
``policy`` (resolved name, e.g. ``static:best(3:5)``), ``requests``, ``finished``, ``rejected``,
``aborted``, ``met``, ``attainment``, ``goodput_rps``, ``goodput_rps_per_gpu``,
``rejected_share``, ``{ttft,tpot,e2e}_{p50,p90,p99}`` (seconds; honest: a request that never got
there counts as infinitely late, and a percentile that lands on one is a miss, written null; null
also when no request has the value), ``{ttft,tpot,e2e}_unreached_share`` (share of each metric's
requests counted infinite), ``{ttft,tpot,e2e}_{p50,p90,p99}_served`` (over the requests that have
the value; see ``dopd.metrics.percentiles``), ``gpu_seconds``, ``switches``,
``kv_bytes_moved``, ``sim_end_s``, ``events``, ``wall_s``; with ``--max-goodput`` also
``max_goodput_rps`` (rate scale found x the workload's mean arrival rate),
``max_goodput_rps_per_gpu`` (over the instance budget's GPUs), ``max_goodput_rate_scale``,
``max_goodput_runs``, ``max_goodput_converged``, ``max_goodput_feasible`` and
``max_goodput_monotone``.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from dopd.bench.goodput import MaxGoodputResult, max_goodput
from dopd.bench.report import (
    comparison_table,
    safe_name,
    summary_record,
    write_json,
    write_requests_csv,
    write_timeline_csv,
)
from dopd.bench.verdict import verdict
from dopd.cli import simulate_demo
from dopd.cli.checks import (
    MAX_SEARCH_INSTANCES,
    MAX_SIM_INSTANCES,
    check_count,
    check_output_dir,
    check_output_file,
    emit_json,
    json_to_stdout,
)
from dopd.cli.common import (
    ProgressFn,
    add_cluster_options,
    add_config_option,
    add_goodput_options,
    add_output_options,
    add_slo_options,
    add_truth_options,
    add_workload_options,
    build_workload,
    overrides_from_args,
    parse_list,
    progress_bar,
)
from dopd.config import write_resolved
from dopd.control.cluster_models import build_models
from dopd.control.manager.decisions import write_jsonl
from dopd.control.policies.base import PolicyContext, make_policy
from dopd.metrics.summary import MetricsSummary, summarize_result
from dopd.perf import build_latency_model
from dopd.sim.api import SimResult
from dopd.sim.run_config import DEFAULT_SYNTHETIC_REQUESTS, RunConfig, load_run_config
from dopd.sim.simulation import run_simulation
from dopd.workload import Workload

_DEFAULT = RunConfig()

DESCRIPTION = "\n\n".join(textwrap.fill(paragraph, 92) for paragraph in (
    "Run one workload through one or more policies on the same simulated cluster (no GPU, no "
    "network) and print a comparison table (SLO attainment, goodput, rejected share, P90 TTFT "
    "and TPOT, GPU-seconds, role switches) and a short verdict. Percentiles count every "
    "request: one that was rejected or never finished counts as infinitely late, so a "
    "percentile landing on it shows 'miss' (null in the JSON; served-only figures are there "
    "as *_served).",
    "Default (no --trace, --lengths, --arrival, --rate, --cv or --config): the main job, "
    f"{simulate_demo.SUMMARY}, on {_DEFAULT.cluster.instances} x {_DEFAULT.cluster.gpu} "
    f"instances of {_DEFAULT.cluster.model}; --rate-scale, --duration, --requests, --seed and "
    "every other option apply to it.",
    f"With --arrival or --rate: synthetic arrivals (default {_DEFAULT.workload.arrival} at "
    f"{_DEFAULT.workload.rate:g} req/s, {DEFAULT_SYNTHETIC_REQUESTS} requests) with lengths "
    "from --lengths or from built-in statistics resembling the Azure conversation trace "
    "(lognormal; prompt mean 1155 tokens, output mean 211). Traces and length tables: a "
    "shipped dataset's name (dopd data list) or a path.",
))

EPILOG = """\
examples:
  dopd simulate                                  # the main job (a few seconds)
  dopd simulate --rate-scale 3 --policy colocated,dopd
  dopd simulate --trace azure-conv --rate-scale 16 --duration 60 --slo-ttft 0.5 --slo-tpot 0.1 \\
      --policy colocated,static:4:4,static:best,dopd --json out.json
  dopd simulate --lengths sharegpt --arrival gamma --cv 3 --rate 20 --duration 60
  dopd simulate --max-goodput --attainment 0.9 --out results/
"""

SIMULATE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("attainment", "attain %", "pct"),
    ("goodput_rps", "goodput r/s", "{:.2f}"),
    ("rejected_share", "rejected %", "pct"),
    ("ttft_p90", "TTFT p90 s", "{:.3f}"),
    ("tpot_p90", "TPOT p90 ms", "ms"),
    ("gpu_seconds", "GPU-s", "{:.0f}"),
    ("switches", "switches", "{:.0f}"),
    ("max_goodput_rps", "max goodput r/s", "{:.2f}"),
    ("max_goodput_rps_per_gpu", "per GPU", "{:.3f}"),
)
"""The table's columns (key, header, format of ``dopd.bench.report.comparison_table``); the
JSON and ``--out`` hold every percentile."""


_TYPICAL_SEARCH_RUNS = 10
"""Runs a max-goodput search usually takes; only used to pace the progress bar."""


@dataclass(frozen=True)
class PolicyRun:
    """One policy's run: as given (``spec``), its result, metrics and optional max goodput."""

    spec: str
    result: SimResult
    summary: MetricsSummary
    goodput: MaxGoodputResult | None = None


def check_policies(cfg: RunConfig) -> None:
    """Build every policy (and the calibrated latency model, if any) once so that bad names,
    splits or calibration files fail before any simulation runs."""
    c = cfg.cluster
    if c.calibration is not None or c.profile is not None:
        build_latency_model(c.model, c.gpu, c.tp, c.preset, c.calibration, c.kv_mem_util,
                            profile=c.profile)
    models = build_models(c)
    context = PolicyContext(cfg.cluster, models.latency, cfg.slo, cfg.seed, models.kv_blocks)
    for spec in cfg.policies:
        make_policy(spec, context)


def simulate(
    cfg: RunConfig,
    workload: Workload,
    progress: ProgressFn | None = None,
) -> dict[str, PolicyRun]:
    """Simulate ``workload`` under every policy of ``cfg`` (and, when ``cfg.goodput.enabled``,
    bisect each policy's max-goodput rate scale). Keys are the policy specs as given.

    Deterministic for a given config and workload. Raises DopdError on bad policies.
    """
    check_policies(cfg)
    runs: dict[str, PolicyRun] = {}
    total = len(cfg.policies)
    # Each policy owns an equal slice of the bar; with a goodput search the main run takes the
    # first half and the search (about _TYPICAL_SEARCH_RUNS runs) the second.
    main_share = 0.5 if cfg.goodput.enabled else 1.0
    for index, spec in enumerate(cfg.policies):

        def step(fraction: float, index: int = index, spec: str = spec) -> None:
            if progress is not None:
                progress((index + main_share * fraction) / total, f"{spec} ({index + 1}/{total})")

        result = run_simulation(workload, cfg.cluster, spec, cfg.slo, cfg.seed,
                                step if progress is not None else None)
        goodput = None
        if cfg.goodput.enabled:

            def probe(runs_done: int, scale: float, index: int = index, spec: str = spec) -> None:
                if progress is not None:
                    share = min(runs_done / _TYPICAL_SEARCH_RUNS, 1.0)
                    progress((index + 0.5 + 0.5 * share) / total,
                             f"max goodput {spec}: run {runs_done + 1}, scale {scale:.3g}")

            goodput = search_max_goodput(cfg, workload, spec, probe)
        runs[spec] = PolicyRun(spec, result, summarize_result(result, cfg.slo), goodput)
    return runs


def search_max_goodput(
    cfg: RunConfig,
    workload: Workload,
    spec: str,
    on_probe: Callable[[int, float], None] | None = None,
) -> MaxGoodputResult:
    """Bisect the rate scale of ``workload`` at which ``spec`` keeps attainment >= the target.

    ``on_probe(runs_done, scale)`` is called before each simulation.
    """
    g = cfg.goodput
    done = [0]

    def attainment(scale: float) -> float:
        if on_probe is not None:
            on_probe(done[0], scale)
        done[0] += 1
        result = run_simulation(workload.scale_rate(scale), cfg.cluster, spec, cfg.slo, cfg.seed)
        return summarize_result(result, cfg.slo).attainment

    return max_goodput(attainment, cfg.slo.attainment, g.lo, g.hi, g.rel_tol, g.max_runs)


def policy_record(run: PolicyRun, base_rate_rps: float, gpus: int) -> dict[str, Any]:
    """The JSON object of one policy (fields in the module doc); ``base_rate_rps`` is the
    unscaled workload's mean arrival rate, ``gpus`` the GPUs of the instance budget."""
    s, r = run.summary, run.result
    record = summary_record(r.policy, s, gpus)
    record.update(
        gpu_seconds=r.gpu_seconds,
        switches=r.switches,
        kv_bytes_moved=r.kv_bytes_moved,
        sim_end_s=r.sim_end_s,
        events=r.events,
        wall_s=r.wall_s,
    )
    if run.goodput is not None:
        g = run.goodput
        record.update(
            max_goodput_rps=g.goodput_rps(base_rate_rps),
            max_goodput_rps_per_gpu=g.goodput_rps(base_rate_rps) / gpus,
            max_goodput_rate_scale=g.rate_scale,
            max_goodput_runs=g.runs,
            max_goodput_converged=g.converged,
            max_goodput_feasible=g.feasible,
            max_goodput_monotone=g.monotone,
        )
    return record


def records_of(runs: Mapping[str, PolicyRun], workload: Workload, cfg: RunConfig) -> dict[str, Any]:
    """JSON document: an object keyed by policy spec (as given), one record each."""
    base = workload.rate_rps
    return {spec: policy_record(run, base, cfg.cluster.gpus) for spec, run in runs.items()}


def write_outputs(
    out: Path, cfg: RunConfig, workload: Workload, runs: Mapping[str, PolicyRun],
    records: Mapping[str, Any],
) -> list[Path]:
    """Write everything of a run under ``out``; returns the paths written.

    ``results.json`` (as ``--json``), ``config.json`` / ``config.toml`` (resolved config),
    ``workload.json`` (workload facts), per policy ``requests_<name>.csv``,
    ``timeline_<name>.csv`` and ``decisions_<name>.jsonl`` (the decision log as JSON lines, when
    the policy logged any), and the
    plots ``timeline.png``, ``latency_cdf.png`` and, with a goodput search,
    ``attainment_vs_rate.png``.
    """
    paths = [write_json(out / "results.json", records), *write_resolved(cfg, out)]
    paths.append(write_json(out / "workload.json", workload.summary()))
    for spec, run in runs.items():
        name = safe_name(spec)
        paths.append(write_requests_csv(out / f"requests_{name}.csv", run.result))
        paths.append(write_timeline_csv(out / f"timeline_{name}.csv", run.result.timeline))
        if run.result.decisions:
            paths.append(write_jsonl(out / f"decisions_{name}.jsonl", run.result.decisions))
    results = {spec: run.result for spec, run in runs.items()}
    from dopd.bench.plots import plot_attainment_vs_rate, plot_latency_cdfs, plot_timelines

    paths.append(plot_timelines(results, out / "timeline.png"))
    paths.append(plot_latency_cdfs(results, out / "latency_cdf.png", cfg.slo))
    probes = {
        spec: [(k * workload.rate_rps, a) for k, a in run.goodput.history]
        for spec, run in runs.items() if run.goodput is not None
    }
    if probes:
        paths.append(plot_attainment_vs_rate(probes, out / "attainment_vs_rate.png",
                                             cfg.slo.attainment))
    return paths


def _goodput_lines(records: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = []
    for spec, rec in records.items():
        if "max_goodput_runs" not in rec:
            continue
        if not rec["max_goodput_feasible"]:
            lines.append(f"max goodput {spec}: target missed even at the lowest rate scale "
                         f"({rec['max_goodput_runs']} runs)")
            continue
        note = "" if rec["max_goodput_converged"] else ", not converged (raise --goodput-max-runs)"
        lines.append(
            f"max goodput {spec}: {rec['max_goodput_rps']:.2f} req/s "
            f"({rec['max_goodput_rps_per_gpu']:.3f} per GPU) at rate scale "
            f"{rec['max_goodput_rate_scale']:.4g}, {rec['max_goodput_runs']} runs{note}"
        )
    return lines


def check_sim_instances(cfg: RunConfig) -> None:
    """The instance budget within :data:`MAX_SIM_INSTANCES`, and within
    :data:`MAX_SEARCH_INSTANCES` when a policy searches every split, with the reason."""
    smaller = "simulate a smaller pool at a proportionally lower --rate-scale"
    check_count(cfg.cluster.instances, "--instances", MAX_SIM_INSTANCES,
                f"simulation time grows with the pool; {smaller}")
    if any(spec.startswith("static:best") for spec in cfg.policies):
        check_count(cfg.cluster.instances, "--instances", MAX_SEARCH_INSTANCES,
                    f"static:best simulates each of the pool's N-1 splits; {smaller}, or "
                    "drop static:best")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dopd simulate``."""
    demo = simulate_demo.is_demo(args)
    cfg = load_run_config(args.config,
                          simulate_demo.simulate_overrides(args, overrides_from_args(args)))
    check_sim_instances(cfg)
    json_path = check_output_file(args.json)
    out = check_output_dir(args.out) if args.out else None
    workload = build_workload(cfg.workload, cfg.seed, cfg.cluster.model)
    with progress_bar(args.quiet) as bar:
        runs = simulate(cfg, workload, bar)
    records = records_of(runs, workload, cfg)
    notes: list[str] = []
    if args.json is not None:
        emit_json(args.json, records)
    if json_path is not None:
        write_resolved(cfg, json_path.parent, f"{json_path.stem}.config")
        notes.append(f"wrote {json_path} (config: {json_path.stem}.config.toml beside it)")
    if out is not None:
        written = write_outputs(out, cfg, workload, runs, records)
        notes.append(f"wrote {len(written)} files to {out}")
    if not args.quiet and not json_to_stdout(args.json):
        _print_summary(cfg, workload, records, notes, demo)
    return 0


def _print_summary(cfg: RunConfig, workload: Workload, records: Mapping[str, Any],
                   notes: list[str], demo: bool) -> None:
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120)
    c, w = cfg.cluster, cfg.workload
    source = (f"trace {w.trace}" if w.trace
              else f"{w.arrival} arrivals, lengths {w.lengths or 'built-in'}")
    scale = f" at {w.rate_scale:g}x" if w.rate_scale != 1.0 else ""
    router = f", router {c.router}" if c.router != "auto" else ""
    title = (f"{source}{scale}: {len(workload)} requests, {workload.rate_rps:.1f} req/s over "
             f"{workload.duration_s:.0f} s\n{c.model} on {c.instances} x "
             f"{f'{c.tp} ' if c.tp > 1 else ''}{c.gpu}{router} | SLO TTFT {cfg.slo.ttft_s:g} s, "
             f"TPOT {1000 * cfg.slo.tpot_s:g} ms, target {100 * cfg.slo.attainment:g}%")
    console.print(comparison_table(display_records(records), title=title,
                                   columns=SIMULATE_COLUMNS))
    for index, line in enumerate(verdict(records, cfg.slo.attainment)):
        console.print(line if index == 0 else f"  {line}", highlight=False,
                      style="bold" if index == 0 else None)
    for line in _goodput_lines(records):
        console.print(line, highlight=False)
    if demo:
        console.print("Next:", style="bold", highlight=False)
        for cmd, what in simulate_demo.NEXT_COMMANDS:
            console.print(f"  {cmd}", style="cyan", highlight=False, soft_wrap=True)
            console.print(f"      {what}", highlight=False)
    for line in notes:
        console.print(line, highlight=False)


def display_records(records: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The records as the table shows them: keyed by the resolved policy name where it names
    the spec's choice (``static:best(7:1)``), with ``rejected_share`` added."""
    shown: dict[str, dict[str, Any]] = {}
    for spec, rec in records.items():
        name = str(rec.get("policy") or spec)
        label = name if name.startswith(spec) and name not in shown else spec
        requests = rec.get("requests") or 0
        shown[label] = {**rec, "rejected_share": (rec.get("rejected") or 0) / requests
                        if requests else None}
    return shown


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``dopd simulate``."""
    p = subparsers.add_parser(
        "simulate", help="simulate a workload under one or more policies and compare them",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--policy", type=parse_list, default=None, metavar="LIST",
                   help="comma-separated policies: colocated, static:P:D, static:best, dopd, "
                   f"... (default {','.join(simulate_demo.DEFAULT_POLICIES)}, or the "
                   "--config file's)")
    add_config_option(p)
    add_workload_options(p)
    add_cluster_options(p)
    add_truth_options(p)
    add_slo_options(p)
    add_goodput_options(p)
    add_output_options(p)
    p.set_defaults(func=run)
    return p

