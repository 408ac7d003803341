"""``dopd plan``: how many prefill and decode instances a workload needs, with predictions.

The help text is :data:`DESCRIPTION` and :data:`EPILOG`; :func:`run` checks the options, reads
the load (:func:`load_stats`), solves (:func:`dopd.control.ratio.solve`) and prints a table or
one JSON object (``--json``). Bad input exits with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from dopd.cli.checks import (
    MAX_PLAN_INSTANCES,
    add_json_option,
    check_count,
    check_output_file,
    emit_json,
    json_to_stdout,
)
from dopd.cli.common import (
    BUILTIN_LENGTHS,
    add_cluster_options,
    add_slo_options,
    add_workload_options,
    build_workload,
    config_from_args,
)
from dopd.control.ratio import InstanceModel, PDPlan, SolverConfig, WorkloadStats, solve
from dopd.errors import require
from dopd.sim.run_config import RunConfig

DESCRIPTION = """\
Recommend how many prefill and decode instances a workload needs to meet its SLO, with the
predicted TTFT, TPOT and attainment of every split.

The workload is a trace (--trace, with --rate-scale and --duration / --requests cuts), stated
moments (--rate with --isl-mean / --osl-mean and their CVs, lognormal lengths), or any
synthetic workload of dopd simulate (--arrival, --lengths, ...), sampled. With --instances N
the pool is fixed and every split of N is predicted; without it (the default) the plan is the
smallest elastic pool that meets the SLO, up to --max-instances.
"""

EPILOG = """\
examples:
  dopd plan --trace azure-code --instances 8                          # fixed pool of 8
  dopd plan --rate 20 --isl-mean 1500 --isl-cv 1.2 --osl-mean 250 --osl-cv 0.8 \\
      --slo-ttft 1 --slo-tpot 0.05                                     # elastic: minimal counts
  dopd plan --trace azure-conv --rate-scale 3 --instances 6 --json      # one JSON object
"""

SAMPLED_REQUESTS = 20000
"""Requests drawn from a synthetic workload to measure its statistics."""

_MOMENT_OPTIONS = ("isl_mean", "isl_cv", "osl_mean", "osl_cv")


def _positive(value: float | None, what: str) -> None:
    require(value is None or (math.isfinite(value) and value > 0),
            f"{what} must be > 0, got {value}")


def load_stats(args: argparse.Namespace, cfg: RunConfig) -> WorkloadStats:
    """The load the options describe (see the module docstring)."""
    stated = any(getattr(args, name, None) is not None for name in _MOMENT_OPTIONS)
    if stated:
        require(args.trace is None and args.lengths is None,
                "give either a trace / length file or stated moments (--isl-mean ...), not both")
        require(args.rate is not None, "stated moments need --rate")
        require(args.isl_mean is not None and args.osl_mean is not None,
                "stated moments need both --isl-mean and --osl-mean")
        for name in _MOMENT_OPTIONS:
            value = getattr(args, name)
            if name.endswith("cv"):
                require(value is None or (math.isfinite(value) and value >= 0),
                        f"--{name.replace('_', '-')} must be >= 0, got {value}")
            else:
                _positive(value, f"--{name.replace('_', '-')}")
        w = cfg.workload
        scv = 1.0 if w.cv is None else w.cv * w.cv
        return WorkloadStats.from_moments(
            w.rate * w.rate_scale, args.isl_mean,
            BUILTIN_LENGTHS.prompt_cv if args.isl_cv is None else args.isl_cv,
            args.osl_mean, BUILTIN_LENGTHS.output_cv if args.osl_cv is None else args.osl_cv,
            arrival_scv=scv)
    wcfg = cfg.workload
    if wcfg.trace is None and wcfg.duration_s is None and wcfg.requests is None:
        wcfg = dataclasses.replace(wcfg, requests=SAMPLED_REQUESTS)
    workload = build_workload(wcfg, cfg.seed, cfg.cluster.model)
    require(len(workload) >= 2, "the workload needs at least two requests")
    return WorkloadStats.from_workload(workload)


def _fmt(value: float, digits: int = 3) -> str:
    return "inf" if not math.isfinite(value) else f"{value:.{digits}f}"


def _print_plan(plan: PDPlan, stats: WorkloadStats, inst: InstanceModel, cfg: RunConfig,
                console: Console) -> None:
    slo = cfg.slo
    console.print(
        f"workload: {stats.rate:.3g} req/s (burstiness {stats.arrival_scv:.2g}), "
        f"ISL mean {stats.isl.mean:.0f} CV {stats.isl.cv:.2f}, "
        f"OSL mean {stats.osl.mean:.0f} CV {stats.osl.cv:.2f}", highlight=False)
    console.print(
        f"instance: {inst.name}, KV {inst.kv_capacity_tokens} tokens, TPOT-feasible decode "
        f"batch B*={plan.b_star} ({plan.decode_tokens_per_s:.0f} tok/s)", highlight=False)
    q = round(100 * plan.quantile)
    table = Table(title=f"{plan.mode} pool: predicted per split (SLO TTFT {slo.ttft_s:g} s, "
                        f"TPOT {slo.tpot_s:g} s, target {100 * slo.attainment:g}%)")
    for name in ("P", "D", f"TTFT p{q} s", f"TPOT p{q} s", "P(TTFT ok)", "P(TPOT ok)",
                 "attainment", "goodput rps", "P util", "D util", "D batch"):
        table.add_column(name, justify="right")
    for row in plan.splits:
        chosen = row.n_prefill == plan.n_prefill and row.n_decode == plan.n_decode
        table.add_row(
            str(row.n_prefill), str(row.n_decode), _fmt(row.ttft_p90), _fmt(row.tpot_p90, 4),
            _fmt(row.ttft_attainment), _fmt(row.tpot_attainment), _fmt(row.attainment),
            _fmt(row.goodput, 2), _fmt(row.prefill_utilisation, 2),
            _fmt(row.decode_utilisation, 2), f"{row.decode_batch:.1f}",
            style="bold green" if chosen else None,
        )
    console.print(table)
    console.print(
        f"recommended: {plan.n_prefill} prefill + {plan.n_decode} decode instances; predicted "
        f"TTFT p{q} {_fmt(plan.ttft_p90)} s, TPOT p{q} {_fmt(plan.tpot_p90, 4)} s, "
        f"attainment {_fmt(plan.attainment)}", highlight=False)
    console.print(f"reason: {plan.reason}", highlight=False)


def _record(plan: PDPlan, stats: WorkloadStats, inst: InstanceModel, cfg: RunConfig
            ) -> dict[str, Any]:
    return {
        "workload": {"rate_rps": stats.rate, "arrival_scv": stats.arrival_scv,
                     "isl_mean": stats.isl.mean, "isl_cv": stats.isl.cv,
                     "osl_mean": stats.osl.mean, "osl_cv": stats.osl.cv,
                     "rate_levels": len(stats.rate_levels),
                     "series_windows": 0 if stats.series is None else stats.series.size},
        "instance": {"name": inst.name, "kv_capacity_tokens": inst.kv_capacity_tokens,
                     "model": cfg.cluster.model, "gpu": cfg.cluster.gpu, "tp": cfg.cluster.tp},
        "slo": {"ttft_s": cfg.slo.ttft_s, "tpot_s": cfg.slo.tpot_s,
                "attainment": cfg.slo.attainment},
        "plan": plan.as_dict(),
    }


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dopd plan``."""
    reason = "every split of the pool is predicted; plan per group of instances"
    check_count(args.instances, "--instances", MAX_PLAN_INSTANCES, reason, least=2)
    check_count(args.max_instances, "--max-instances", MAX_PLAN_INSTANCES, reason, least=2)
    check_output_file(args.json)
    cfg = config_from_args(args)
    stats = load_stats(args, cfg)
    inst = InstanceModel.from_cluster_config(cfg.cluster)
    config = SolverConfig(variance_term=not args.no_variance_term,
                          max_instances=args.max_instances)
    plan = solve(stats, inst, cfg.slo, args.instances, config=config)
    if args.json is not None:
        emit_json(args.json, _record(plan, stats, inst, cfg))
        if json_to_stdout(args.json):
            return 0
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)
    _print_plan(plan, stats, inst, cfg, console)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``dopd plan``."""
    p = subparsers.add_parser(
        "plan", help="recommend prefill/decode instance counts for a workload and SLO",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_workload_options(p, requests=SAMPLED_REQUESTS)
    g = p.add_argument_group("stated moments", "Plan for stated length moments at --rate "
                             "(lognormal lengths) instead of a trace.")
    g.add_argument("--isl-mean", type=float, default=None, metavar="TOKENS",
                   help="mean prompt length")
    g.add_argument("--isl-cv", type=float, default=None, metavar="CV",
                   help=f"prompt length CV (default {BUILTIN_LENGTHS.prompt_cv:g})")
    g.add_argument("--osl-mean", type=float, default=None, metavar="TOKENS",
                   help="mean output length")
    g.add_argument("--osl-cv", type=float, default=None, metavar="CV",
                   help=f"output length CV (default {BUILTIN_LENGTHS.output_cv:g})")
    add_cluster_options(p, instances=False)
    add_slo_options(p)
    s = p.add_argument_group("solver")
    s.add_argument("--instances", type=int, default=None, metavar="N",
                   help="fixed pool of N instances (>= 2), each of --tp GPUs: predict every "
                   "split of it (default: none, plan the smallest elastic pool)")
    s.add_argument("--max-instances", type=int, default=64, metavar="N",
                   help="elastic pool: the most instances to consider (cost bound; default 64)")
    s.add_argument("--no-variance-term", action="store_true",
                   help="ablation: plan with E[ISL]^2 in place of E[ISL^2]")
    add_json_option(s, "the plan")
    p.set_defaults(func=run)
    return p
