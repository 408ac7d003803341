"""``dopd perf``: step latency and KV sizing of a model on a GPU type, catalogs, fidelity.

Examples::

    dopd perf --model llama-3-8b --gpu a100-80gb --prefill 512,2048      # one prefill step
    dopd perf --model llama-3-8b --decode 32x1024 --prefill 512+256      # a mixed step
    dopd perf --calibration distserve:opt-13b:tp1 --decode 64x512 --json
    dopd perf --profile vidur-a100 --prefill 512 --decode 32x1024  # measured A100 profile
    dopd perf --list            dopd perf --fidelity

Batch specs: ``--prefill`` is a comma-separated list of chunks ``N`` (a prompt of N tokens),
``N+C`` (N new tokens on C cached ones) or ``KxN`` / ``KxN+C`` (K such chunks); ``--decode`` a list
of ``BxCTX`` (B sequences at context CTX) or ``CTX`` (one sequence).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from typing import Any

from rich.console import Console
from rich.table import Table

from dopd.cli.checks import add_json_option, check_output_file, emit_json, json_to_stdout
from dopd.errors import DopdError, require
from dopd.perf import (
    GPUS,
    MODELS,
    PRESETS,
    BatchShape,
    LatencyModel,
    anchor_fits,
    build_latency_model,
    fidelity_report,
    get_anchor_fit,
    get_gpu,
    get_model,
    gpu_names,
    is_builtin_calibration,
    kv_bytes_per_token,
    kv_bytes_per_token_per_gpu,
    model_names,
)
from dopd.perf.anchors import ANCHOR_GPU
from dopd.perf.fitted import FittedLatencyModel
from dopd.perf.profile_fidelity import preset_profile_fidelity, profile_model_fidelity

DEFAULT_MODEL = "llama-3-8b"
DEFAULT_GPU = "a100-80gb"
_PREFILL_ITEM = re.compile(r"^(?:(\d+)x)?(\d+)(?:\+(\d+))?$")
_DECODE_ITEM = re.compile(r"^(?:(\d+)x)?(\d+)$")


def parse_prefill(spec: str) -> tuple[tuple[int, int], ...]:
    """``"512,2x1024,512+256"`` -> ((512, 0), (1024, 0), (1024, 0), (512, 256))."""
    chunks: list[tuple[int, int]] = []
    for item in spec.split(","):
        match = _PREFILL_ITEM.match(item.strip())
        if match is None:
            raise DopdError(f"malformed --prefill item {item.strip()!r}: expected N, N+CACHED, "
                            "KxN or KxN+CACHED")
        count = int(match.group(1) or 1)
        new, cached = int(match.group(2)), int(match.group(3) or 0)
        require(count >= 1 and new >= 1, f"--prefill item {item.strip()!r} has no tokens")
        chunks.extend([(new, cached)] * count)
    return tuple(chunks)


def parse_decode(spec: str) -> tuple[int, ...]:
    """``"32x1024,2000"`` -> 32 contexts of 1024 and one of 2000."""
    contexts: list[int] = []
    for item in spec.split(","):
        match = _DECODE_ITEM.match(item.strip())
        if match is None:
            raise DopdError(f"malformed --decode item {item.strip()!r}: expected BxCTX or CTX")
        count = int(match.group(1) or 1)
        require(count >= 1, f"--decode item {item.strip()!r} has no sequences")
        contexts.extend([int(match.group(2))] * count)
    return tuple(contexts)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "perf", help="step latency, KV sizing and catalogs of the performance model",
        description="Predict one engine step's time and show KV sizing for a model on a GPU type.",
    )
    parser.add_argument("--model", help=f"model name (default {DEFAULT_MODEL}; see --list)")
    parser.add_argument("--gpu", help=f"GPU type (default {DEFAULT_GPU}; see --list)")
    parser.add_argument("--tp", type=int, help="tensor-parallel degree (default 1)")
    parser.add_argument("--preset", help="roofline preset: modern (default) or legacy2023")
    parser.add_argument("--calibration", metavar="NAME|PATH",
                        help="built-in fit (e.g. distserve:opt-13b:tp1), .csv to fit or .json")
    parser.add_argument("--profile", metavar="NAME|DIR",
                        help="measured operator profile outside attention: vidur-a100 or a folder")
    parser.add_argument("--kv-mem-util", type=float, default=0.9, metavar="FRAC",
                        help="share of each GPU's memory the engine may use for weights, "
                        "activations and KV cache, as in dopd simulate (default 0.9)")
    parser.add_argument("--mem-util", type=float, dest="kv_mem_util",
                        help=argparse.SUPPRESS)  # the option's former name
    parser.add_argument("--prefill", metavar="SPEC", help="prefill chunks: N, N+CACHED, KxN")
    parser.add_argument("--decode", metavar="SPEC", help="decode sequences: BxCTX or CTX")
    add_json_option(parser, "the step, --list or --fidelity")
    parser.add_argument("--list", action="store_true",
                        help="list GPUs, models, presets and built-in calibrations")
    parser.add_argument("--fidelity", action="store_true",
                        help="errors of the presets and the profile model against every shipped "
                        "reference (DistServe fits, Vidur profiles)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    check_output_file(args.json)
    require(math.isfinite(args.kv_mem_util) and 0 < args.kv_mem_util <= 1,
            f"--kv-mem-util must be in (0, 1], got {args.kv_mem_util}")
    if args.list:
        return _list(args.json)
    if args.fidelity:
        return _fidelity(args.preset, args.json)
    require(args.prefill or args.decode,
            "give --prefill and/or --decode (or --list, --fidelity); see dopd perf -h")
    model, gpu, tp = args.model, args.gpu, args.tp
    if args.calibration and is_builtin_calibration(args.calibration):
        fit = get_anchor_fit(args.calibration)
        model, gpu, tp = model or fit.model, gpu or ANCHOR_GPU, tp or fit.tp
    spec, hw = get_model(model or DEFAULT_MODEL), get_gpu(gpu or DEFAULT_GPU)
    tp = 1 if tp is None else tp
    batch = BatchShape(prefill=parse_prefill(args.prefill) if args.prefill else (),
                       decode=parse_decode(args.decode) if args.decode else ())
    check_context(batch, spec.name, spec.max_context)
    latency = build_latency_model(spec, hw, tp, args.preset or "modern", args.calibration,
                                  mem_util=args.kv_mem_util, profile=args.profile)
    breakdown = latency.breakdown(batch)
    tokens = batch.prefill_new_tokens + batch.decode_count
    out: dict[str, Any] = {
        "model": spec.name, "gpu": hw.name, "tp": tp, "latency_model": latency.name,
        "batch": {"prefill": [list(c) for c in batch.prefill], "decode": list(batch.decode)},
        "step_ms": breakdown.step_ms,
        "tokens_per_s": tokens / (breakdown.step_ms / 1e3),
        "breakdown": breakdown.as_dict(),
        "params": spec.params,
        "kv_bytes_per_token": kv_bytes_per_token(spec),
        "kv_bytes_per_token_per_gpu": kv_bytes_per_token_per_gpu(spec, tp),
        "kv_capacity_tokens": latency.kv_capacity_tokens,
        "batch_kv_tokens": batch.kv_tokens,
    }
    if isinstance(latency, FittedLatencyModel):
        coeffs = latency.coefficients
        out["calibration_ms"] = {"prefill": coeffs.prefill, "decode_small_b": coeffs.decode_small_b,
                                 "decode_large_b": coeffs.decode_large_b,
                                 "decode_split_batch": coeffs.decode_split_batch}
    if args.json is not None:
        emit_json(args.json, out)
    if not json_to_stdout(args.json):
        _print_step(out, latency)
    return 0


def check_context(batch: BatchShape, model: str, max_context: int) -> None:
    """DopdError when a sequence of ``batch`` is longer than ``model``'s context window."""
    longest_prefill = max((new + cached for new, cached in batch.prefill), default=0)
    require(longest_prefill <= max_context,
            f"--prefill sequence of {longest_prefill} tokens is longer than {model}'s context "
            f"window of {max_context} tokens")
    longest_decode = max(batch.decode, default=0)
    require(longest_decode <= max_context,
            f"--decode context of {longest_decode} tokens is longer than {model}'s context "
            f"window of {max_context} tokens")


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=120)


def _print_step(out: dict[str, Any], latency: LatencyModel) -> None:
    console = _console()
    info = Table(title=latency.name, show_header=False)
    info.add_column("what")
    info.add_column("value", justify="right")
    info.add_row("parameters", f"{out['params'] / 1e9:.2f} B")
    info.add_row("KV bytes per token", f"{out['kv_bytes_per_token']:,}")
    info.add_row("KV bytes per token per GPU", f"{out['kv_bytes_per_token_per_gpu']:,}")
    info.add_row("KV capacity (tokens)", f"{out['kv_capacity_tokens']:,}")
    info.add_row("batch KV (tokens)", f"{out['batch_kv_tokens']:,}")
    console.print(info)
    step = Table(title="one step")
    step.add_column("component")
    step.add_column("ms", justify="right")
    b = out["breakdown"]
    fitted = b["bound"] == "fitted" or (b["gemm_compute_ms"] == 0.0 == b["weights_ms"])
    for key, label in (("gemm_ms", "linear layers"), ("gemm_compute_ms", "  compute side"),
                       ("weights_ms", "  weight-streaming side"),
                       ("prefill_attention_ms", "prefill attention"),
                       ("decode_attention_ms", "decode attention (KV reads)"),
                       ("allreduce_ms", "TP all-reduce"), ("overhead_ms", "engine overhead")):
        if (fitted and key in ("gemm_compute_ms", "weights_ms")) or (
                b["bound"] == "fitted" and key == "allreduce_ms"):
            continue  # fitted and profile models do not split these out
        step.add_row(label, f"{b[key]:.3f}")
    step.add_row("[bold]step[/bold]", f"[bold]{out['step_ms']:.3f}[/bold]")
    step.add_row("bound", str(b["bound"]))
    step.add_row("tokens / s", f"{out['tokens_per_s']:,.0f}")
    console.print(step)


def _list(json_target: str | None) -> int:
    gpus = [get_gpu(n) for n in gpu_names()]
    models = [get_model(n) for n in model_names()]
    calibrations = [f.name for f in anchor_fits()]
    if json_target is not None:
        emit_json(json_target, {
            "gpus": {g.name: {"flops": g.flops, "hbm_Bps": g.hbm_Bps,
                              "memory_bytes": g.memory_bytes, "link_Bps": g.link_Bps,
                              "nic_Bps": g.nic_Bps} for g in gpus},
            "gpu_aliases": GPUS.names(), "model_aliases": MODELS.names(),
            "models": {m.name: {"params": m.params, "layers": m.layers, "hidden": m.hidden,
                                "heads": m.heads, "kv_heads": m.kv_heads,
                                "kv_bytes_per_token": kv_bytes_per_token(m)} for m in models},
            "presets": {name: p.description for name, p in PRESETS.items()},
            "calibrations": calibrations,
        })
        if json_to_stdout(json_target):
            return 0
    console = _console()
    table = Table(title="GPUs (dense BF16, datasheet)")
    for col in ("name", "TFLOP/s", "HBM TB/s", "memory GiB", "link GB/s", "NIC GB/s"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for g in gpus:
        table.add_row(g.name, f"{g.flops / 1e12:.0f}", f"{g.hbm_Bps / 1e12:.2f}",
                      f"{g.memory_bytes / 2**30:.0f}", f"{g.link_Bps / 1e9:.0f}",
                      f"{g.nic_Bps / 1e9:.0f}")
    console.print(table)
    table = Table(title="models")
    for col in ("name", "params B", "layers", "hidden", "heads/kv", "ffn", "vocab", "KV KiB/tok"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for m in models:
        table.add_row(m.name, f"{m.params / 1e9:.2f}", str(m.layers), str(m.hidden),
                      f"{m.heads}/{m.kv_heads}", str(m.ffn), str(m.vocab),
                      f"{kv_bytes_per_token(m) / 1024:.0f}")
    console.print(table)
    table = Table(title="presets and built-in calibrations")
    table.add_column("name")
    table.add_column("what")
    for name, preset in PRESETS.items():
        table.add_row(name, preset.description)
    for name in calibrations:
        table.add_row(name, "published fit on A100-SXM-80GB (DistServe, 2024)")
    console.print(table)
    return 0


def _fidelity(preset: str | None, json_target: str | None) -> int:
    """Every shipped reference against every model that applies to it (``preset`` None: all
    presets)."""
    from dopd.sim.api import SimConfig

    presets = [preset] if preset else list(PRESETS.names())
    distserve = [fidelity_report(p) for p in presets]
    profiles = [preset_profile_fidelity(p) for p in presets] + [profile_model_fidelity()]
    if json_target is not None:
        emit_json(json_target, {
            "distserve": [{"preset": r.preset, "median": r.median, "worst": r.worst,
                           "fits": [dataclasses.asdict(row) for row in r.rows]}
                          for r in distserve],
            "profiles": [{"model": r.model, "reference": r.reference, "median": r.median,
                          "worst": r.worst, "tp": [dataclasses.asdict(row) for row in r.rows]}
                         for r in profiles],
            "default_preset": SimConfig().preset,
        })
        if json_to_stdout(json_target):
            return 0
    console = _console()
    for report in distserve:
        table = Table(title=f"roofline ({report.preset}) vs DistServe fits (OPT-13B/66B, A100): "
                      "|relative error| in %")
        for col in ("fit", "prefill median", "prefill worst", "decode median", "decode worst",
                    "median", "worst"):
            table.add_column(col, justify="left" if col == "fit" else "right")
        for r in report.rows:
            table.add_row(r.fit, *(f"{100 * v:.1f}" for v in (
                r.prefill_median, r.prefill_worst, r.decode_median, r.decode_worst, r.median,
                r.worst)))
        table.add_row("[bold]all[/bold]", "", "", "", "", f"{100 * report.median:.1f}",
                      f"{100 * report.worst:.1f}")
        console.print(table)
    table = Table(title="vs Vidur A100 profiles (Llama-3-8B outside attention, check points "
                  "kept aside from every fit): |relative error| in %")
    for col in ("model", "TP", "points", "median", "worst"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for report in profiles:
        for r in report.rows:
            table.add_row(report.model, str(r.tp), str(r.points), f"{100 * r.median:.1f}",
                          f"{100 * r.worst:.1f}")
        total = sum(r.points for r in report.rows)
        table.add_row(f"[bold]{report.model}[/bold]", "all", str(total),
                      f"{100 * report.median:.1f}", f"{100 * report.worst:.1f}")
    console.print(table)
    console.print("The profile model applies only to the profiled model (Llama-3-8B), so it is "
                  "not compared with the OPT fits.")
    for line in _preset_summary(distserve, profiles):
        console.print(line)
    return 0


def _preset_summary(distserve: list[Any], profiles: list[Any]) -> list[str]:
    """Lines naming the default preset and how far off the measured references it is."""
    from dopd.sim.api import SimConfig

    default = SimConfig().preset
    lines = []
    by_preset = {r.preset: r for r in distserve}
    for report in profiles:
        name = report.model.removeprefix("roofline ")
        ds = by_preset.get(name)
        tail = "" if ds is None else (f"; DistServe fits median {100 * ds.median:.1f} %, "
                                      f"worst {100 * ds.worst:.1f} %")
        mark = " (the default)" if name == default else ""
        lines.append(f"{report.model}{mark}: Vidur A100 profiles median "
                     f"{100 * report.median:.1f} %, worst {100 * report.worst:.1f} %{tail}")
    lines.append(f"The default preset is {default} (every command without --preset); "
                 "modern-fit is the one fitted to the profiles, --profile vidur-a100 the "
                 "profile model.")
    return lines
