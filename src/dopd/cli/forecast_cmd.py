"""``dopd forecast``: backtest load forecasters on a trace and print their scores per signal."""

from __future__ import annotations

import argparse
import math
from typing import Any

from rich.console import Console
from rich.table import Table

from dopd.cli.checks import add_json_option, check_output_file, emit_json, json_to_stdout
from dopd.errors import require

DEFAULT_MODELS = "constant,ewma,holt,arima"
_SIGNAL_TITLES = {
    "rate": "arrival rate (req/s)",
    "mean_in": "mean input length (tokens)",
    "mean_out": "mean output length (tokens)",
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "forecast",
        help="backtest load forecasters (rate, input/output length) on a trace",
        description=(
            "Cut a trace into windows and let each model predict window t+1 from windows <= t. "
            "Prints MAE, MAPE, RMSE and the coverage of the upper bound per signal; the best "
            "model of each column is bold, the best by MAE is starred."
        ),
    )
    p.add_argument("--trace", required=True, metavar="NAME|PATH",
                   help="trace with arrival times: a shipped dataset (azure-conv, azure-code, "
                   "mooncake; see dopd data list) or a file (Azure CSV, Mooncake JSONL, dopd CSV)")
    p.add_argument("--window", type=float, default=30.0, metavar="S",
                   help="window length in seconds (default 30)")
    p.add_argument("--models", default=DEFAULT_MODELS, metavar="LIST",
                   help=f"comma-separated forecaster specs, e.g. 'ewma(0.3),arima(2,1,1)' "
                        f"(default {DEFAULT_MODELS}; known: constant, ewma, holt, holt-winters, "
                        f"arima)")
    p.add_argument("--quantile", type=float, default=0.9, metavar="Q",
                   help="quantile of the upper prediction bound (default 0.9)")
    add_json_option(p, "the scores")
    p.set_defaults(func=run)
    return p


def _fmt(value: float, metric: str) -> str:
    if math.isnan(value):
        return "-"
    if metric in ("mape", "coverage"):
        return f"{100 * value:.1f}%"
    return f"{value:.4g}"


def _table(result: Any, signal: str) -> Table:
    from dopd.control.forecast.backtest import METRICS

    rows = [result.score(signal, m) for m in result.models]
    best = {metric: result.best(signal, metric) for metric in METRICS}
    n = rows[0].n
    table = Table(title=f"{_SIGNAL_TITLES.get(signal, signal)} - {n} windows scored")
    table.add_column("model")
    for header in ("MAE", "MAPE", "RMSE", f"coverage (q={result.quantile:g})", "fallback"):
        table.add_column(header, justify="right")
    for row in rows:
        cells = []
        for metric in METRICS:
            text = _fmt(getattr(row, metric), metric)
            cells.append(f"[bold green]{text}[/]" if best[metric] == row.model else text)
        name = f"{row.model} *" if best["mae"] == row.model else row.model
        table.add_row(name, *cells, f"{100 * row.fallback_share:.0f}%")
    return table


def run(args: argparse.Namespace) -> int:
    from dopd.control.forecast import backtest, split_specs
    from dopd.control.monitor import window_series
    from dopd.workload import load_workload

    window = float(args.window)
    require(math.isfinite(window) and window > 0, f"--window must be > 0 s, got {args.window}")
    require(0.5 <= args.quantile < 1.0, f"--quantile must be in [0.5, 1), got {args.quantile}")
    models = split_specs(args.models)
    json_path = check_output_file(args.json)
    workload = load_workload(args.trace)
    series = window_series(workload, window)
    result = backtest(series, models, quantile=args.quantile)
    if args.json is not None:
        payload: dict[str, Any] = {"trace": str(args.trace), "requests": len(workload),
                                   **result.as_dict()}
        emit_json(args.json, payload)
        if json_to_stdout(args.json):
            return 0

    console = Console()
    console.print(
        f"[bold]{args.trace}[/]: {len(workload)} requests, {len(series)} windows of {window:g} s; "
        "each model predicts window t+1 from windows <= t"
    )
    for signal in result.signals:
        console.print(_table(result, signal))
    if json_path is not None:
        console.print(f"scores written to {json_path}")
    return 0
