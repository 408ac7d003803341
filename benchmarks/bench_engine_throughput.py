"""Engine throughput: dopd's LLMEngine (scheduler + runner) vs transformers' generate, same weights.

For each model config, writes a seeded random checkpoint, loads it with dopd's loader into an
:class:`LLMEngine` and with transformers, and for each batch size B runs B greedy requests of
``--prompt`` tokens generating ``--new`` tokens each, on both, alternately (best of
``--repeats``). Reported per batch: prefill tokens/s (B * prompt / time to the first token) and
decode tokens/s (B * (new - 1) / time after the first token), on the wall clock and on the process
CPU clock (robust to other processes sharing the cores), plus the ratio ours / transformers and
whether the greedy tokens are identical. Then the continuous-batching gain: the time per token of
B requests decoded together against the same requests run one after another through the engine.

    python3 benchmarks/bench_engine_throughput.py --configs tiny --batches 1,8,32 --threads 1
    python3 benchmarks/bench_engine_throughput.py --configs big --new 32 --batches 1,8,32

Needs transformers (a test-only dependency). The transformers timing helper is shared with
``bench_model_decode.py`` (the bare-model benchmark).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model_decode import Clock, hf_generate, now, since
from dopd.engine.engine_options import EngineOptions
from dopd.engine.llm_engine import LLMEngine
from dopd.engine.model import (
    TINY_CONFIG,
    SamplingParams,
    load_checkpoint,
    write_random_checkpoint,
)
from dopd.engine.sequence import SchedulerConfig

CONFIGS = {
    "tiny": TINY_CONFIG,
    "big": dataclasses.replace(
        TINY_CONFIG, hidden_size=1024, intermediate_size=2816, num_layers=8, num_heads=16,
        num_kv_heads=8, head_dim=64, sliding_windows=(None,) * 8,
    ),
}
Result = tuple[Clock, Clock, list[list[int]]]  # (prefill, total, generated ids)


def engine_generate(engine: LLMEngine, prompts: list[list[int]], new: int) -> Result:
    """Run the prompts together through the engine; prefill = until every first token."""
    params = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    t0 = now()
    rids = [engine.add_request(p, params) for p in prompts]
    out: dict[int, list[int]] = {rid: [] for rid in rids}
    prefill: Clock | None = None
    while engine.has_unfinished():
        for o in engine.step():
            out[o.request_id].extend(o.new_token_ids)
        if prefill is None and all(out.values()):
            prefill = since(t0)
    assert prefill is not None
    return prefill, since(t0), [out[r] for r in rids]


def make_engine(folder: Path, batch: int, prompt: int, new: int, detokenize: bool) -> LLMEngine:
    per_seq = -(-(prompt + new) // 16)
    sched = SchedulerConfig(max_batched_tokens=max(8192, batch * prompt), max_num_seqs=batch)
    opts = EngineOptions(num_blocks=batch * per_seq + 8, block_size=16, scheduler=sched,
                         detokenize=detokenize)
    return LLMEngine(load_checkpoint(folder), opts)


def compare(name: str, folder: Path, hf, args: argparse.Namespace) -> None:
    gen = torch.Generator().manual_seed(0)
    print(f"\n== {name}: prompt {args.prompt}, new {args.new}, threads {args.threads}, "
          f"detokenize {args.detokenize}")
    print(f"{'batch':>5} {'system':>12} {'prefill tok/s wall':>19} {'prefill tok/s CPU':>18} "
          f"{'decode tok/s wall':>18} {'decode tok/s CPU':>17}")
    for batch in args.batches:
        prompts = torch.randint(0, 256, (batch, args.prompt), generator=gen).tolist()
        engine = make_engine(folder, batch, args.prompt, args.new, args.detokenize)
        runners: dict[str, Callable[[], Result]] = {
            "dopd": lambda e=engine, p=prompts: engine_generate(e, p, args.new),
            "transformers": lambda p=prompts: hf_generate(hf, p, args.new),
        }
        best = {k: [0.0] * 4 for k in runners}  # prefill wall, prefill cpu, decode wall, cpu
        tokens: dict[str, list[list[int]]] = {}
        for fn in runners.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for key, fn in runners.items():
                pre, total, tokens[key] = fn()
                b = best[key]
                for i in (0, 1):
                    b[i] = max(b[i], batch * args.prompt / max(pre[i], 1e-9))
                    b[2 + i] = max(b[2 + i], batch * (args.new - 1) / max(total[i] - pre[i], 1e-9))
        for key, (pw, pc, dw, dc) in best.items():
            print(f"{batch:>5} {key:>12} {pw:>19.0f} {pc:>18.0f} {dw:>18.0f} {dc:>17.0f}")
        d, t = best["dopd"], best["transformers"]
        same = sum(a == b for a, b in zip(tokens["dopd"], tokens["transformers"], strict=True))
        r = [f"{x / y:.2f}x" for x, y in zip(d, t, strict=True)]
        print(f"{batch:>5} {'ratio':>12} {r[0]:>19} {r[1]:>18} {r[2]:>18} {r[3]:>17}"
              f"   identical greedy tokens {same}/{batch}")
    if args.sequential:
        sequential_gain(folder, args, gen)


def sequential_gain(folder: Path, args: argparse.Namespace, gen: torch.Generator) -> None:
    """Per-token time of ``batch`` requests together vs one after another (same engine)."""
    batch = max(args.batches)
    prompts = torch.randint(0, 256, (batch, args.prompt), generator=gen).tolist()
    engine = make_engine(folder, batch, args.prompt, args.new, args.detokenize)
    engine_generate(engine, prompts[:2], args.new)  # warm-up
    tokens = batch * args.new
    together = min(since_total(lambda: engine_generate(engine, prompts, args.new))
                   for _ in range(args.repeats))
    start = now()
    for p in prompts:
        engine_generate(engine, [p], args.new)
    alone = since(start)
    print(f"continuous batching, {batch} requests x {args.new} tokens: together "
          f"{together[0] / tokens * 1e3:.2f} ms/token wall ({together[1] / tokens * 1e3:.2f} CPU),"
          f" one at a time {alone[0] / tokens * 1e3:.2f} ms/token wall "
          f"({alone[1] / tokens * 1e3:.2f} CPU): {alone[0] / together[0]:.1f}x faster batched "
          f"(CPU {alone[1] / together[1]:.1f}x)")


def since_total(fn: Callable[[], Result]) -> Clock:
    return fn()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny", help=f"comma list of {', '.join(CONFIGS)}")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--detokenize", action="store_true",
                        help="also detokenize every token (transformers' generate does not)")
    parser.add_argument("--no-sequential", dest="sequential", action="store_false",
                        help="skip the batched-vs-sequential comparison")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    for name in args.configs.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            write_random_checkpoint(tmp, CONFIGS[name])
            hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
            hf.generation_config.eos_token_id = None
            hf.generation_config.pad_token_id = 0
            with torch.inference_mode():
                compare(name, Path(tmp), hf, args)


if __name__ == "__main__":
    main()
