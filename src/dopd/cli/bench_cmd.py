"""``dopd bench``: replay a workload against any OpenAI-compatible server and measure it.

The work is in :mod:`dopd.bench.loadgen` (open-loop load, streamed requests, client-side
timing), :mod:`dopd.bench.loadgen_prompts` (prompts of the right token length) and
:mod:`dopd.bench.loadgen_report` (record, CSVs, plots); this module is the argparse front end.

The JSON (``--json``, ``results.json``) has ``dopd simulate``'s shape: an object keyed by
``--label`` whose record carries the same fields (``requests``, ``attainment``, ``goodput_rps``,
``rejected_share``, ``ttft_p50`` ... ``e2e_p99``, ``ttft_p90_served`` ...) plus client-side
extras, so a live run and a simulation of the same workload compare key by key. The percentiles
are honest: a failed request (HTTP 429 is a rejection, any other failure an abort) counts as
infinitely late, and a percentile that lands on one is a miss (null). Exit status: 0 when the
run completed (failed requests are misses in the results), 1 when no request finished, 2 on bad
input or an unreachable server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console

from dopd.bench.report import print_comparison
from dopd.cli.checks import check_output_dir, check_output_file, emit_json, json_to_stdout
from dopd.cli.common import (
    add_config_option,
    add_output_options,
    add_slo_options,
    add_workload_options,
    build_workload,
    config_from_args,
    progress_bar,
)
from dopd.config import write_resolved
from dopd.errors import require
from dopd.metrics.summary import summarize_result
from dopd.sim.run_config import RunConfig
from dopd.types import RequestState
from dopd.workload import Workload

if TYPE_CHECKING:
    from dopd.bench.loadgen import LoadGenConfig
    from dopd.bench.loadgen_client import ServedModel

# The load generator (httpx, asyncio) and its reports (matplotlib) are imported in run() so
# that every other `dopd` command starts without them.

ENDPOINT_NAMES = ("completions", "chat")
"""``--endpoint`` choices: the keys of ``dopd.bench.loadgen_client.ENDPOINTS``."""

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_RATE = 2.0
DEFAULT_REQUESTS = 100
"""Synthetic load when neither the options nor --config set one: 100 requests at 2 req/s
(about 50 s). The built-in lengths average 1155 prompt and 211 output tokens, so this asks a
server for about 2300 prefill and 420 decode tokens/s, what a default ``dopd serve`` (two
dopd-tiny CPU workers) keeps up with; ``dopd simulate``'s 500 requests at 60 req/s flood it."""
DEFAULT_TIMEOUT_S = 600.0

DESCRIPTION = """\
Replay a trace or a synthetic workload against an OpenAI-compatible server (dopd serve, vLLM,
SGLang, ...) with the workload's timing (open loop: requests go out on schedule whatever the
server does), stream every answer, and measure TTFT, TPOT and E2E on the client. Prints and
writes the same fields and plots as `dopd simulate`. A failed request (HTTP 429, other errors,
timeouts) counts as infinitely late in the percentiles: one that lands on it shows "miss".

Each request asks for its trace output length as max_tokens with `ignore_eos: true` (a vLLM,
SGLang and dopd extension; --no-ignore-eos for servers that reject unknown fields) and a prompt
synthesized to its trace prompt length: exact for dopd-tiny (one byte per token) and for
--tokenizer PATH (a tokenizer.json), about 4 characters per token otherwise (--tokenizer
chars:C). The chat endpoint adds the server's chat template to the prompt.
"""

EPILOG = """\
examples:
  dopd bench --url http://127.0.0.1:8000 --requests 200 --rate 5 --max-context 2048
  dopd bench --url http://gpu-host:8000 --model meta-llama/Llama-3.1-8B-Instruct \\
      --tokenizer ./llama31/tokenizer.json --trace azure-conv \\
      --duration 120 --rate-scale 2 --slo-ttft 0.5 --slo-tpot 0.1 --out results/vllm
  dopd bench --endpoint chat --lengths sharegpt --arrival gamma --cv 3 --rate 10 \\
      --max-concurrency 256 --json live.json
"""


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"min_tokens\": 8}'")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``dopd bench``."""
    p = subparsers.add_parser(
        "bench", help="load-test an OpenAI-compatible server with a trace or synthetic workload",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s = p.add_argument_group("server")
    s.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL})")
    s.add_argument("--model", default=None,
                   help="model name to request (default: the first one the server lists)")
    s.add_argument("--api-key", default=None, metavar="KEY",
                   help="bearer token (default: $OPENAI_API_KEY if set)")
    s.add_argument("--endpoint", choices=ENDPOINT_NAMES, default="completions",
                   help="/v1/completions or /v1/chat/completions (default completions)")
    r = p.add_argument_group("requests")
    r.add_argument("--tokenizer", default="auto", metavar="SPEC|PATH",
                   help="how prompts get their token length: auto (dopd-tiny for a model of "
                   "that name, else chars:4), dopd-tiny, byte[:special=K], chars:C, or a "
                   "tokenizer.json / HF folder (default auto)")
    r.add_argument("--max-context", type=int, default=None, metavar="N",
                   help="shorten requests so that prompt + output fits N tokens (default: the "
                   "max_model_len the server lists for the model, if any)")
    r.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="send ignore_eos: true so outputs have the trace's length (default on)")
    r.add_argument("--extra-body", type=_json_object, default=None, metavar="JSON",
                   help="extra fields merged into every request body, e.g. "
                   "'{\"min_tokens\": 16, \"temperature\": 0}'")
    r.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"per-request time limit from its send; a request past it is aborted "
                   f"(default {DEFAULT_TIMEOUT_S:g})")
    r.add_argument("--max-concurrency", type=int, default=None, metavar="N",
                   help="most requests in flight; later arrivals wait, and the wait counts in "
                   "their TTFT (default: no cap)")
    r.add_argument("--label", default="bench",
                   help="name of this run in the table and the JSON (default bench)")
    r.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="GPUs behind the server, for goodput per GPU and GPU-seconds")
    add_config_option(p)
    add_workload_options(p, rate=DEFAULT_RATE, requests=DEFAULT_REQUESTS)
    add_slo_options(p)
    add_output_options(p)
    p.set_defaults(func=run)
    return p


def _check_options(args: argparse.Namespace) -> None:
    require(args.timeout > 0, f"--timeout must be > 0 s, got {args.timeout}")
    require(args.max_concurrency is None or args.max_concurrency >= 1,
            f"--max-concurrency must be >= 1, got {args.max_concurrency}")
    require(args.max_context is None or args.max_context >= 2,
            f"--max-context must be >= 2 tokens, got {args.max_context}")
    require(args.gpus is None or args.gpus >= 1, f"--gpus must be >= 1, got {args.gpus}")
    require(bool(args.label.strip()), "--label must not be empty")


def bench_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """:data:`DEFAULT_RATE` and :data:`DEFAULT_REQUESTS` for a synthetic load the command
    line leaves open (a --config file sets its own)."""
    if args.config is not None or args.trace is not None:
        return {}
    out: dict[str, Any] = {}
    if args.rate is None:
        out["rate"] = DEFAULT_RATE
    if args.requests is None and args.duration is None:
        out["requests"] = DEFAULT_REQUESTS
    return out


def resolve_model(
    requested: str | None, served: tuple[ServedModel, ...], url: str
) -> ServedModel:
    """The model to request: ``requested`` when the server lists it (or lists nothing), else
    the first listed one when none was requested. DopdError otherwise."""
    from dopd.bench.loadgen_client import ServedModel

    if requested is None:
        require(bool(served), f"server at {url} lists no model; give --model")
        return served[0]
    names = [m.id for m in served]
    require(not served or requested in names,
            f"model {requested!r} is not served at {url} (it serves: {', '.join(names)})")
    return served[names.index(requested)] if served else ServedModel(requested)


def fit_context(workload: Workload, max_context: int | None) -> tuple[Workload, int]:
    """``workload`` shortened to ``max_context`` tokens per request (None: unchanged) and the
    number of requests that were shortened."""
    from dopd.bench.loadgen import clip_to_context

    if max_context is None:
        return workload, 0
    fitted = clip_to_context(workload, max_context)
    shorter = (fitted.prompt_tokens + fitted.output_tokens
               < workload.prompt_tokens + workload.output_tokens)
    return fitted, int(shorter.sum())


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dopd bench``."""
    from dopd.bench.loadgen import LoadGenConfig, run_load
    from dopd.bench.loadgen_client import base_url, probe_server
    from dopd.bench.loadgen_prompts import make_synth, synthesize_prompts
    from dopd.bench.loadgen_report import bench_record, write_bench_outputs

    _check_options(args)
    json_path = check_output_file(args.json)
    out = check_output_dir(args.out) if args.out else None
    url = base_url(args.url)
    # --model names the served model here, not a catalog model: keep it out of the config.
    cfg = config_from_args(argparse.Namespace(**{**vars(args), "model": None,
                                                 **bench_defaults(args)}))
    workload = build_workload(cfg.workload, cfg.seed, cfg.cluster.model)
    api_key = args.api_key if args.api_key is not None else os.environ.get("OPENAI_API_KEY")
    served = probe_server(args.url, api_key, timeout_s=min(args.timeout, 10.0))
    listed = resolve_model(args.model, served, url)
    model = listed.id
    max_context = args.max_context if args.max_context is not None else listed.max_model_len
    workload, clipped = fit_context(workload, max_context)
    synth = make_synth(args.tokenizer, model)
    config = LoadGenConfig(
        url=args.url, model=model, endpoint=args.endpoint, api_key=api_key,
        timeout_s=args.timeout, max_concurrency=args.max_concurrency,
        ignore_eos=args.ignore_eos, extra_body=args.extra_body or {}, label=args.label,
    )
    prompts = synthesize_prompts(synth, workload, cfg.seed)
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        if not args.quiet:
            Console(file=sys.stderr).print(f"warning: {message}", style="yellow", highlight=False)

    with progress_bar(args.quiet, delay_s=0.0) as bar:
        result = run_load(workload, prompts, config, bar, warn)
    summary = summarize_result(result, cfg.slo)
    records = {config.label: bench_record(result, summary, workload.rate_rps, args.gpus)}
    settings = {
        "url": url, "model": model, "served_models": [m.id for m in served],
        "endpoint": args.endpoint, "tokenizer": synth.spec, "max_context": max_context,
        "shortened_requests": clipped,
        "ignore_eos": args.ignore_eos, "extra_body": args.extra_body or {},
        "timeout_s": args.timeout, "max_concurrency": args.max_concurrency,
        "label": args.label, "gpus": args.gpus, "seed": cfg.seed, "warnings": warnings,
    }
    notes = _notes(records[config.label])
    if clipped:
        notes.insert(0, f"{clipped} requests were shortened to fit the context window of "
                     f"{max_context} tokens")
    if args.json is not None:
        emit_json(args.json, records)
    if json_path is not None:
        write_resolved(cfg, json_path.parent, f"{json_path.stem}.config")
        notes.append(f"wrote {json_path} (config: {json_path.stem}.config.toml beside it)")
    if out is not None:
        written = write_bench_outputs(out, cfg, workload, result, records, settings)
        notes.append(f"wrote {len(written)} files to {out}")
    if not args.quiet and not json_to_stdout(args.json):
        _print_summary(cfg, workload, config, url, records, notes)
    if not (result.state == int(RequestState.FINISHED)).any():
        print(f"dopd bench: no request finished ({_errors_text(records[config.label])})",
              file=sys.stderr)
        return 1
    return 0


def _errors_text(record: dict[str, Any]) -> str:
    return ", ".join(f"{n} x {kind}" for kind, n in record["errors"].items()) or "no errors"


def _notes(record: dict[str, Any]) -> list[str]:
    notes = []
    if record["errors"]:
        notes.append(f"failed requests: {_errors_text(record)}")
    if record["capped"]:
        notes.append(f"{record['capped']} requests waited for the concurrency cap (longest "
                     f"wait {record['cap_wait_max_s']:.2f} s)")
    if record["dispatch_lag_p99_s"] > 0.01:
        notes.append(f"the load generator ran late (P99 dispatch lag "
                     f"{1e3 * record['dispatch_lag_p99_s']:.0f} ms): client-side latencies "
                     "include it")
    ratio = record["prompt_tokens_ratio"]
    if ratio is not None and abs(ratio - 1.0) > 0.05:
        notes.append(f"the server counted {100 * ratio:.0f}% of the target prompt tokens: "
                     "give --tokenizer for exact prompt lengths")
    if record["short_outputs"]:
        notes.append(f"{record['short_outputs']} answers were shorter than asked (EOS or "
                     "context limit; see --ignore-eos, --max-context)")
    return notes


def _print_summary(cfg: RunConfig, workload: Workload, config: LoadGenConfig, url: str,
                   records: dict[str, Any], notes: list[str]) -> None:
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200)
    title = (f"{len(workload)} requests, {workload.rate_rps:.2f} req/s over "
             f"{workload.duration_s:.1f} s | {config.model} at {url} "
             f"({config.endpoint}) | SLO TTFT {cfg.slo.ttft_s:g} s, TPOT {cfg.slo.tpot_s:g} s, "
             f"target {100 * cfg.slo.attainment:g}%")
    print_comparison(records, console=console, title=title)
    for line in notes:
        console.print(line, highlight=False)

