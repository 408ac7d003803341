"""Decode throughput of dopd's paged Llama forward vs transformers' generate, same weights.

Writes dopd-tiny as an HF folder, loads it with dopd's loader and with transformers, and times
greedy generation of a batch of prompts: prefill, then decode steps.
Decode tokens/s = batch * (new_tokens - 1) / (time of the generation after its first token),
on the wall clock and on the process CPU clock (the latter is robust to other processes sharing
the cores). The two are run alternately and the best run of each is kept. Also checks that both
produce the same greedy tokens. Needs transformers (a test-only dependency).

    python3 benchmarks/bench_model_decode.py --batch 32 --prompt 128 --new 128 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import torch

from dopd.engine.model import Segment, load_checkpoint, write_random_checkpoint

Clock = tuple[float, float]  # (wall seconds, process CPU seconds)


def now() -> Clock:
    return time.perf_counter(), time.process_time()


def since(start: Clock) -> Clock:
    wall, cpu = now()
    return wall - start[0], cpu - start[1]


def dopd_generate(
    model, prompts: list[list[int]], new: int, block_size: int
) -> tuple[Clock, Clock, list]:
    """(prefill seconds, total seconds, generated ids) for greedy batch generation."""
    per_seq = -(-(len(prompts[0]) + new) // block_size)
    cache = model.make_cache(per_seq * len(prompts), block_size)
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(len(prompts))]
    t0 = now()
    logits = model.forward([Segment(t, 0, p) for t, p in zip(tables, prompts, strict=True)], cache)
    tokens = logits.argmax(-1).tolist()
    t_prefill = since(t0)
    out = [[tok] for tok in tokens]
    cached = len(prompts[0])
    for _ in range(new - 1):
        logits = model.forward(
            [Segment(t, cached, [tok]) for t, tok in zip(tables, tokens, strict=True)], cache
        )
        tokens = logits.argmax(-1).tolist()
        for o, tok in zip(out, tokens, strict=True):
            o.append(tok)
        cached += 1
    return t_prefill, since(t0), out


def hf_generate(hf, prompts: list[list[int]], new: int) -> tuple[Clock, Clock, list]:
    """As :func:`dopd_generate`; the end of prefill is when generate first checks its stopping
    criteria (after sampling the first token)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Stamp(StoppingCriteria):
        def __init__(self) -> None:
            self.first: Clock | None = None

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
            if self.first is None:
                self.first = now()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    ids = torch.tensor(prompts)
    stamp = Stamp()
    t0 = now()
    out = hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=new,
        min_new_tokens=new,
        stopping_criteria=StoppingCriteriaList([stamp]),
    )
    total = since(t0)
    assert stamp.first is not None
    prefill = (stamp.first[0] - t0[0], stamp.first[1] - t0[1])
    return prefill, total, out[:, ids.shape[1] :].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no-staging",
        action="store_true",
        help="gather the KV from the paged pool on every step (no decode staging)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        write_random_checkpoint(tmp)
        ours = load_checkpoint(tmp).model
        if args.no_staging:
            ours.staging = None
        hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 256, (args.batch, args.prompt), generator=gen).tolist()
    decoded = args.batch * (args.new - 1)
    print(f"batch {args.batch}, prompt {args.prompt}, new {args.new}, threads {args.threads}")
    runners: dict[str, Callable[[], tuple[Clock, Clock, list]]] = {
        "dopd": lambda: dopd_generate(ours, prompts, args.new, args.block_size),
        "transformers": lambda: hf_generate(hf, prompts, args.new),
    }
    best: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in runners}  # wall, cpu, prefill
    results = {}
    with torch.inference_mode():
        for fn in runners.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for name, fn in runners.items():
                pre, total, results[name] = fn()
                for i in (0, 1):
                    best[name][i] = max(best[name][i], decoded / max(total[i] - pre[i], 1e-9))
                best[name][2] = pre[0]
    for name, (wall, cpu, pre) in best.items():
        print(
            f"{name:>12}: decode {wall:7.0f} tokens/s wall, {cpu:7.0f} tokens/s CPU "
            f"(best of {args.repeats}); prefill {pre * 1e3:.0f} ms"
        )
    for i, clock in enumerate(("wall", "CPU")):
        print(
            f"dopd / transformers decode speed ({clock}): "
            f"{best['dopd'][i] / best['transformers'][i]:.2f}x"
        )
    same = sum(a == b for a, b in zip(results["dopd"], results["transformers"], strict=True))
    print(f"identical greedy continuations: {same}/{args.batch}")


if __name__ == "__main__":
    main()
