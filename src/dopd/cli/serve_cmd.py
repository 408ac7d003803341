"""``dopd serve``: an OpenAI-compatible server over local worker processes with P/D
disaggregation, until Ctrl-C or SIGTERM (then exit code 0).

Options are parsed and the deployment checked (:mod:`dopd.serve.preflight`: host, port, device,
worker count) before torch, fastapi or ray load, so a wrong option fails in about a second.
Help texts show :class:`~dopd.serve.serve_config.ServeConfig`'s defaults, and the epilog lists every
key of the ``[serve]`` table of ``--config``, both read from the dataclass so they never drift.

Keys come from files (``--api-key-file``, ``--admin-key-file``) or the environment
(``DOPD_API_KEY``, ``DOPD_ADMIN_KEY``), never from argv: ``--api-key`` still works but warns
that every local user sees it in ``ps``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import stat
import sys
from pathlib import Path
from typing import Any

from dopd.cli.common import add_config_option
from dopd.errors import DopdError, require
from dopd.serve.serve_config import ServeConfig

_D = ServeConfig()

OPTION_KEYS: dict[str, str] = {
    "model": "model", "instances": "instances", "policy": "policy", "router": "router",
    "mode": "mode", "gpu": "gpu", "perf_model": "perf_model",
    "step_time_scale": "step_time_scale", "kv_mem_util": "kv_mem_util", "device": "device",
    "dtype": "dtype", "threads": "threads", "host": "host", "port": "port",
    "api_key": "api_key", "slo_ttft": "slo_ttft_s", "slo_tpot": "slo_tpot_s",
    "max_model_len": "max_model_len", "kv_timeout": "kv_timeout_s", "tick": "tick_s",
    "seed": "seed", "backend": "backend", "ray_address": "ray_address",
    "kv_transport": "kv_transport", "ray_cpus_per_instance": "ray_cpus_per_instance",
    "ray_gpus_per_instance": "ray_gpus_per_instance", "calibration": "calibration",
    "model_bias": "model_bias", "shutdown_grace": "shutdown_timeout_s",
    "worker_stall_timeout": "worker_stall_timeout_s", "max_queued_requests": "max_queued_requests",
    "max_queued_tokens": "max_queued_tokens", "cluster_max_requests": "cluster_max_requests",
    "cluster_max_tokens": "cluster_max_tokens", "http_timeout": "http_timeout_s",
    "max_connections": "max_connections", "fault_injection": "fault_injection",
    "protect_metrics": "protect_metrics",
    "trusted_hosts": "trusted_hosts", "channel_auth": "channel_auth", "kv_auth": "kv_auth",
    "ray_insecure": "ray_insecure",
    "calibration_file": "calibration_file", "profile": "profile",
    "self_calibration": "self_calibration", "save_calibration": "save_calibration",
    "engine": "engine", "vllm_url": "vllm_urls", "vllm_python": "vllm_python",
    "vllm_port": "vllm_port", "vllm_side_port": "vllm_side_port",
    "vllm_kv_space": "vllm_kv_space_gb", "vllm_arg": "vllm_args", "vllm_log_dir": "vllm_log_dir",
    "vllm_metrics_period": "vllm_metrics_period_s", "vllm_eager": "vllm_eager",
    "vllm_timeout": "vllm_timeout_s", "vllm_start_timeout": "vllm_start_timeout_s",
}
"""argparse ``dest`` -> :class:`ServeConfig` field (the ``[serve]`` key it overrides)."""


def _default(key: str) -> str:
    value = getattr(_D, key)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def config_keys_epilog() -> str:
    """The ``[serve]`` keys of ``--config`` with their defaults, those without an option marked."""
    optioned = set(OPTION_KEYS.values())
    lines = ["[serve] keys of --config FILE.toml, with their defaults "
             "(* = no command-line option):"]
    row: list[str] = []
    for f in dataclasses.fields(ServeConfig):
        row.append(f"{f.name}={_default(f.name)}{'' if f.name in optioned else '*'}")
    width, line = 92, "  "
    for item in row:
        if len(line) + len(item) + 1 > width:
            lines.append(line.rstrip())
            line = "  "
        line += item + " "
    lines.append(line.rstrip())
    lines += ["", "examples:",
              "  dopd serve --instances 2 --policy static:1:1",
              "  dopd serve --mode emulated --perf-model llama-3-8b --gpu a100-80gb "
              "--instances 4 --policy dopd",
              "  dopd serve --config serve.toml --port 8080",
              "  dopd serve --save-calibration out/tiny-cpu.json   # then --calibration "
              "out/tiny-cpu.json skips the measurement"]
    return "\n".join(lines)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="serve a model over HTTP (OpenAI API) with dynamic P/D disaggregation",
        description="Start a front end and N worker processes on this machine and serve until "
        "stopped (Ctrl-C or SIGTERM). Options override the [serve] table of --config; "
        "defaults are shown in brackets.",
        epilog=config_keys_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_option(p)
    p.add_argument("--model", default=None, help=f"dopd-tiny or a checkpoint folder "
                   f"[{_D.model}]")
    p.add_argument("--instances", type=int, default=None, metavar="N",
                   help=f"worker processes (the budget of an elastic policy), bounded by this "
                   f"machine's cores and memory [{_D.instances}]")
    p.add_argument("--policy", default=None, metavar="SPEC",
                   help=f"cluster policy: colocated, static:P:D, dopd, ... [{_D.policy}]")
    p.add_argument("--router", default=None, metavar="SPEC",
                   help="request placement: auto (the policy's router, as in dopd "
                        "simulate), least-loaded, pd-pair, round-robin, "
                        f"length-aware[:KEY=VALUE,...] [{_D.router}]")
    p.add_argument("--mode", choices=("real", "emulated"), default=None,
                   help=f"real: PyTorch engine; emulated: steps sleep the latency model's time "
                   f"[{_D.mode}]")
    p.add_argument("--gpu", default=None, help=f"GPU of the latency model (emulated mode and "
                   f"the policy's model) [{_D.gpu}]")
    p.add_argument("--perf-model", default=None, metavar="NAME",
                   help=f"model of the latency model [{_D.perf_model}]")
    p.add_argument("--step-time-scale", type=float, default=None, metavar="X",
                   help=f"emulated steps sleep X times the predicted time (0: no time) "
                   f"[{_D.step_time_scale:g}]")
    p.add_argument("--kv-mem-util", type=float, default=None, metavar="FRAC",
                   help=f"share of the GPU's memory for weights, activations and KV cache, as "
                   f"in dopd simulate: sizes emulated workers' KV [{_D.kv_mem_util:g}]")
    p.add_argument("--device", default=None, help="real mode: auto (a GPU per worker, round "
                   "robin, when torch sees one, else the CPU), cpu, cuda or cuda:N "
                   f"[{_D.device}]")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="real mode weights and KV [bfloat16/float16 on a GPU, float32 on the "
                   "CPU]")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads of each worker [1 for a small model such as dopd-tiny "
                   "and in emulated mode, else the cores divided among the workers, at most 4]")
    p.add_argument("--host", default=None, help=f"address to listen on [{_D.host}]")
    p.add_argument("--port", type=int, default=None, help=f"port, 0 for a free one [{_D.port}]")
    p.add_argument("--api-key-file", default=None, metavar="PATH",
                   help="require the bearer key in PATH on /v1/* (or set DOPD_API_KEY) [none]")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="deprecated: the key shows in ps; use --api-key-file or DOPD_API_KEY")
    p.add_argument("--admin-key-file", default=None, metavar="PATH",
                   help="require the bearer key in PATH on admin routes (or set "
                   "DOPD_ADMIN_KEY) [none: admin routes serve loopback clients only]")
    p.add_argument("--protect-metrics", dest="protect_metrics", action="store_const",
                   const=True, default=None,
                   help="require the API key on /metrics and /debug/* too [open]")
    p.add_argument("--trusted-host", dest="trusted_hosts", action="append", default=None,
                   metavar="NAME", help="a Host header value to serve (repeatable; * for any) "
                   "[localhost names when --host is loopback, else any]")
    p.add_argument("--no-channel-auth", dest="channel_auth", action="store_const",
                   const=False, default=None, help="plain worker channels, no ZMQ CURVE: "
                   "trusted networks and measurements only [CURVE on]")
    p.add_argument("--kv-auth", choices=("auto", "curve", "hmac"), default=None,
                   help="KV sockets: curve (authenticated and encrypted), hmac (an HMAC on "
                   "every message, KV bytes unencrypted, full bandwidth), auto (hmac when all "
                   f"workers are on loopback, else curve) [{_D.kv_auth}]")
    p.add_argument("--slo-ttft", type=float, default=None, metavar="S",
                   help=f"TTFT SLO in seconds [{_D.slo_ttft_s:g}]")
    p.add_argument("--slo-tpot", type=float, default=None, metavar="S",
                   help=f"TPOT SLO in seconds [{_D.slo_tpot_s:g}]")
    p.add_argument("--max-model-len", type=int, default=None, metavar="TOKENS",
                   help="context window [the model's]")
    p.add_argument("--kv-timeout", type=float, default=None, metavar="S",
                   help=f"decode wait for KV before recomputing the prompt [{_D.kv_timeout_s:g}]")
    p.add_argument("--tick", type=float, default=None, metavar="S",
                   help=f"controller tick interval [{_D.tick_s:g}]")
    p.add_argument("--seed", type=int, default=None, help=f"random seed [{_D.seed}]")
    p.add_argument("--no-calibration", dest="calibration", action="store_const", const=False,
                   default=None, help="do not learn the latency model from observed step "
                   "times: router, admission and policy predict with the configured one "
                   "[calibration on]")
    p.add_argument("--model-bias", type=float, default=None, metavar="B",
                   help="the control plane's latency model predicts (1 + B) times the "
                   "configured model's step times, the workers' steps unchanged (B = -0.2: it "
                   f"thinks the GPU 20%% faster than it is) [{_D.model_bias:g}]")
    rel = p.add_argument_group("reliability")
    rel.add_argument("--shutdown-grace", type=float, default=None, metavar="S",
                     help="on SIGTERM, seconds open requests may still finish; then each ends "
                     "with an error (streams: an error event and [DONE]) "
                     f"[{_D.shutdown_timeout_s:g}]")
    rel.add_argument("--worker-stall-timeout", type=float, default=None, metavar="S",
                     help="a worker holding work that reports nothing for S seconds is declared "
                     "stalled: its requests go elsewhere and it is killed and restarted (0: off) "
                     f"[{_D.worker_stall_timeout_s:g}]")
    rel.add_argument("--max-queued-requests", type=int, default=None, metavar="N",
                     help="requests in flight per instance; past every limit: 429 with "
                     f"Retry-After [{_D.max_queued_requests}]")
    rel.add_argument("--max-queued-tokens", type=int, default=None, metavar="N",
                     help=f"prompt tokens in flight per instance [{_D.max_queued_tokens}]")
    rel.add_argument("--cluster-max-requests", type=int, default=None, metavar="N",
                     help="requests in flight in the cluster [per-instance limit x instances]")
    rel.add_argument("--cluster-max-tokens", type=int, default=None, metavar="N",
                     help="prompt tokens in flight in the cluster [per-instance limit x "
                     "instances]")
    rel.add_argument("--http-timeout", type=float, default=None, metavar="S",
                     help="a connection's request (headers and body) must arrive within S "
                     "seconds, an idle keep-alive connection closes after S "
                     f"[{_D.http_timeout_s:g}]")
    rel.add_argument("--max-connections", type=int, default=None, metavar="N",
                     help=f"connections served at once; more are closed [{_D.max_connections}]")
    rel.add_argument("--fault-injection", action="store_const", const=True, default=None,
                     help="TESTS ONLY: a prompt starting with the token ids of "
                     "dopd.serve.faults.CRASH_MARKER crashes its worker [off]")
    cal = p.add_argument_group("latency model (the control plane's belief)")
    cal.add_argument("--calibration", dest="calibration_file", default=None,
                     metavar="FILE|NAME", help="configured latency model from a fit, as in "
                     "dopd simulate: the JSON of dopd profile or --save-calibration, a "
                     "built-in name or a CSV of measured steps; real mode then measures "
                     "nothing at start [none]")
    cal.add_argument("--profile", default=None, metavar="NAME|DIR",
                     help="configured latency model from a measured operator profile "
                     "(vidur-a100 or a folder), as in dopd simulate [none]")
    cal.add_argument("--self-calibration", choices=("start", "background", "off"),
                     default=None, help="real mode: measure this engine's step times over a "
                     "small grid of shapes and predict with a fit of them; start: before the "
                     "workers (a few seconds on dopd-tiny), background: once they are ready "
                     f"[{_D.self_calibration}]")
    cal.add_argument("--no-self-calibration", dest="self_calibration", action="store_const",
                     const="off", help="same as --self-calibration off")
    cal.add_argument("--save-calibration", default=None, metavar="FILE.json",
                     help="write the self-calibration's fit to FILE.json (for --calibration)")
    ray = p.add_argument_group("cluster backend")
    ray.add_argument("--backend", choices=("local", "ray"), default=None,
                     help="local: worker processes here; ray: one Ray actor per instance "
                     f"(elastic policies may add and remove them) [{_D.backend}]")
    ray.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="join the Ray cluster at auto, HOST:PORT or ray://HOST:PORT "
                     "[none: start a local Ray instance]")
    ray.add_argument("--kv-transport", choices=("socket", "object_store"), default=None,
                     help="hand-off KV peer to peer over sockets or through the Ray object "
                     f"store [{_D.kv_transport}]")
    ray.add_argument("--ray-cpus-per-instance", type=float, default=None, metavar="N",
                     help=f"CPUs each actor asks Ray for [{_D.ray_cpus_per_instance:g}]")
    ray.add_argument("--ray-gpus-per-instance", type=float, default=None, metavar="N",
                     help=f"GPUs each actor asks Ray for [{_D.ray_gpus_per_instance:g}]")
    ray.add_argument("--ray-insecure", dest="ray_insecure", action="store_const", const=True,
                     default=None, help="start the local Ray instance without Ray's token "
                     "authentication (anyone who reaches its ports runs code as you) [auth on]")
    vl = p.add_argument_group("vLLM fleet (docs/vllm.md)")
    vl.add_argument("--engine", choices=("dopd", "vllm"), default=None,
                    help="dopd: dopd's own workers; vllm: `vllm serve` instances driven "
                    f"through vLLM's P/D protocol (NIXL) [{_D.engine}]")
    vl.add_argument("--vllm-url", action="append", default=None, metavar="URL",
                    help="attach to a running `vllm serve` (once per instance; --model is then "
                    "the local folder with its tokenizer) [launch them here]")
    vl.add_argument("--vllm-python", default=None, metavar="PATH",
                    help="the Python of the vLLM environment [.venv-vllm/bin/python]")
    vl.add_argument("--vllm-port", type=int, default=None, metavar="PORT",
                    help=f"HTTP port of the first launched instance, then +1 [{_D.vllm_port}]")
    vl.add_argument("--vllm-side-port", type=int, default=None, metavar="PORT",
                    help="NIXL side-channel port of the first launched instance, then +1 "
                    f"[{_D.vllm_side_port}]")
    vl.add_argument("--vllm-kv-space", type=int, default=None, metavar="GB",
                    help="VLLM_CPU_KVCACHE_SPACE of each launched instance "
                    f"[{_D.vllm_kv_space_gb}]")
    vl.add_argument("--vllm-compile", dest="vllm_eager", action="store_const", const=False,
                    default=None, help="let vLLM compile the model (slower start) [eager]")
    vl.add_argument("--vllm-arg", action="append", default=None, metavar="ARG",
                    help="one more argument of every launched `vllm serve` (repeat)")
    vl.add_argument("--vllm-log-dir", default=None, metavar="DIR",
                    help="write each launched instance's log to DIR/vllm-N.log [discarded]")
    vl.add_argument("--vllm-metrics-period", type=float, default=None, metavar="S",
                    help=f"seconds between scrapes of each instance's /metrics "
                    f"[{_D.vllm_metrics_period_s:g}]")
    vl.add_argument("--vllm-timeout", type=float, default=None, metavar="S",
                    help="longest wait between two chunks of an instance's answer; past it the "
                    f"request fails with 504 [{_D.vllm_timeout_s:g}]")
    vl.add_argument("--vllm-start-timeout", type=float, default=None, metavar="S",
                    help="longest wait for an instance's /health at start and after a restart "
                    f"[{_D.vllm_start_timeout_s:g}]")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from dopd.serve.preflight import bind_listener, check_devices, check_instances
    from dopd.serve.serve_config import load_serve_config

    overrides = {key: getattr(args, dest) for dest, key in OPTION_KEYS.items()}
    for key in ("trusted_hosts", "vllm_urls", "vllm_args"):
        if overrides[key] is not None:
            overrides[key] = tuple(overrides[key])
    overrides["api_key"] = resolve_key(args.api_key_file, args.api_key, "DOPD_API_KEY",
                                       "--api-key-file")
    overrides["admin_key"] = resolve_key(args.admin_key_file, None, "DOPD_ADMIN_KEY",
                                         "--admin-key-file")
    config = load_serve_config(args.config, overrides)
    check_instances(config)
    listener = bind_listener(config.host, config.port)
    try:
        check_devices(config)
        from dopd.serve.server import serve

        return serve(config, listener)
    finally:
        listener.close()


def read_key_file(path: str, option: str) -> str:
    """The key in ``path`` (surrounding whitespace stripped); DopdError when it cannot be read
    or is empty. Warns when other users may read the file."""
    file = Path(path)
    try:
        key = file.read_text(encoding="utf-8").strip()
        mode = file.stat().st_mode
    except (OSError, UnicodeError) as exc:
        raise DopdError(f"{option} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    require(key != "", f"{option} {path}: the file is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"dopd serve: warning: {option} {path} is readable by other users "
              f"(chmod 600 it)", file=sys.stderr, flush=True)
    return key


def resolve_key(path: str | None, argv_key: str | None, env: str, option: str) -> str | None:
    """A key from its file, else argv (with a warning), else the environment variable ``env``;
    None leaves the config file's value (or none)."""
    if path is not None:
        return read_key_file(path, option)
    if argv_key is not None:
        print("dopd serve: warning: --api-key is visible to every local user (ps); use "
              "--api-key-file or DOPD_API_KEY", file=sys.stderr, flush=True)
        require(argv_key != "", "--api-key must not be empty")
        return argv_key
    value = os.environ.get(env)
    if value is not None:
        require(value.strip() != "", f"{env} is set but empty")
        return value.strip()
    return None
