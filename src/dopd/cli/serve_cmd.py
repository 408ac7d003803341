"""``dopd serve``: an OpenAI-compatible server over local worker processes with P/D
disaggregation, until Ctrl-C or SIGTERM (then exit code 0)."""

from __future__ import annotations

import argparse

from dopd.cli.common import add_config_option


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="serve a model over HTTP (OpenAI API) with dynamic P/D disaggregation",
        description="Start a front end and N worker processes on this machine and serve until "
        "stopped. Options override the [serve] table of --config.")
    add_config_option(p)
    p.add_argument("--model", default=None, help="dopd-tiny (default) or a checkpoint folder")
    p.add_argument("--instances", type=int, default=None, metavar="N",
                   help="worker processes (default 2)")
    p.add_argument("--policy", default=None, metavar="SPEC",
                   help="cluster policy: colocated (default), static:P:D, dopd, ...")
    p.add_argument("--router", default=None, metavar="SPEC",
                   help="request placement: auto (default: the policy's router, as in dopd "
                        "simulate), least-loaded, pd-pair, round-robin, "
                        "length-aware[:KEY=VALUE,...]")
    p.add_argument("--mode", choices=("real", "emulated"), default=None,
                   help="real: PyTorch engine; emulated: steps sleep the latency model's time")
    p.add_argument("--gpu", default=None, help="GPU of the latency model (emulated mode and "
                   "the policy's model; default a100-80gb)")
    p.add_argument("--perf-model", default=None, help="model of the latency model (default "
                   "llama-3-8b)")
    p.add_argument("--step-time-scale", type=float, default=None, metavar="X",
                   help="emulated steps sleep X times the predicted time (0: no time)")
    p.add_argument("--kv-mem-util", type=float, default=None, metavar="FRAC",
                   help="share of the GPU's memory for weights, activations and KV cache, as "
                   "in dopd simulate: sizes emulated workers' KV (default 0.9)")
    p.add_argument("--device", default=None, help="real mode: auto (default: a GPU per worker, "
                   "round robin, when torch sees one, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="real mode weights and KV (default: bfloat16/float16 on a GPU, "
                   "float32 on the CPU)")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--api-key", default=None, help="require this bearer key on /v1/*")
    p.add_argument("--slo-ttft", type=float, default=None, metavar="S", help="TTFT SLO (s)")
    p.add_argument("--slo-tpot", type=float, default=None, metavar="S", help="TPOT SLO (s)")
    p.add_argument("--max-model-len", type=int, default=None, metavar="TOKENS",
                   help="context window (default: the model's)")
    p.add_argument("--kv-timeout", type=float, default=None, metavar="S",
                   help="decode wait for KV before recomputing the prompt (default 5)")
    p.add_argument("--tick", type=float, default=None, metavar="S",
                   help="controller tick interval (default 1)")
    p.add_argument("--seed", type=int, default=None)
    ray = p.add_argument_group("cluster backend")
    ray.add_argument("--backend", choices=("local", "ray"), default=None,
                     help="local: worker processes here (default); ray: one Ray actor per "
                     "instance (elastic policies may add and remove them)")
    ray.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="join the Ray cluster at auto, HOST:PORT or ray://HOST:PORT "
                     "(default: start a local Ray instance)")
    ray.add_argument("--kv-transport", choices=("socket", "object_store"), default=None,
                     help="hand-off KV peer to peer over sockets (default) or through the "
                     "Ray object store")
    ray.add_argument("--ray-cpus-per-instance", type=float, default=None, metavar="N",
                     help="CPUs each actor asks Ray for (default 1)")
    ray.add_argument("--ray-gpus-per-instance", type=float, default=None, metavar="N",
                     help="GPUs each actor asks Ray for (default 0)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from dopd.serve.config import load_serve_config
    from dopd.serve.server import serve

    config = load_serve_config(args.config, {
        "model": args.model, "instances": args.instances, "policy": args.policy,
        "router": args.router,
        "mode": args.mode, "gpu": args.gpu, "perf_model": args.perf_model,
        "step_time_scale": args.step_time_scale, "kv_mem_util": args.kv_mem_util,
        "host": args.host, "port": args.port,
        "api_key": args.api_key, "slo_ttft_s": args.slo_ttft, "slo_tpot_s": args.slo_tpot,
        "max_model_len": args.max_model_len, "kv_timeout_s": args.kv_timeout,
        "tick_s": args.tick, "seed": args.seed, "backend": args.backend,
        "ray_address": args.ray_address, "kv_transport": args.kv_transport,
        "ray_cpus_per_instance": args.ray_cpus_per_instance,
        "ray_gpus_per_instance": args.ray_gpus_per_instance, "device": args.device,
        "dtype": args.dtype})
    return serve(config)
