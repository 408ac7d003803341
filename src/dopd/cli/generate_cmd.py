"""``dopd generate``: run one prompt through the built-in PyTorch engine (a quick local check).

Examples::

    dopd generate --prompt "Hello" --max-tokens 32                 # dopd-tiny, streamed text
    dopd generate --model ./my-llama --prompt "Hi" --temperature 0 --json
    dopd generate --model ./qwen --chat --prompt "What is 2+2?" --stop "\\n" --seed 7

Text is streamed to stdout as it is generated, with a one-line summary on stderr. ``--json``
prints one JSON object instead: ``text``, ``token_ids`` (the generated ids), ``finish_reason``,
token counts, timings and ``threads``; ``--json PATH`` streams the text and writes the object
to PATH. Torch threads default to :func:`dopd.engine.threads.default_threads`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from dopd.cli.checks import add_json_option, check_output_file, emit_json, json_to_stdout
from dopd.engine.threads import (
    MAX_DEFAULT_THREADS,
    SMALL_MODEL_PARAMS,
    approx_params,
    available_cores,
    busy_cores,
    check_device,
    default_threads,
)

DEFAULT_MODEL = "dopd-tiny"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="generate text for one prompt with the built-in PyTorch engine",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|PATH",
                   help=f"built-in model name or HF checkpoint folder (default {DEFAULT_MODEL})")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt as a user message with the model's chat template")
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=64, metavar="N",
                   help="most tokens to generate (default 64)")
    g.add_argument("--temperature", type=float, default=1.0, metavar="T",
                   help="sampling temperature, 0 for greedy (default 1.0)")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="top-k filter (0: off)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="top-p filter (1: off)")
    g.add_argument("--seed", type=int, default=0, help="random seed of the sampling (default 0)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop string (repeatable); it is not part of the output")
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at the EOS token")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N "
                   "(default cpu)")
    r.add_argument("--dtype", default=None,
                   help="float32, bfloat16 or float16 (default: float32 on CPU, bf16 on CUDA)")
    r.add_argument("--threads", type=int, default=None, metavar="N",
                   help=f"torch CPU threads (default: 1 for a model under "
                   f"{SMALL_MODEL_PARAMS // 10**6} M parameters such as dopd-tiny, else the "
                   f"idle cores (cores minus the load average), at most {MAX_DEFAULT_THREADS})")
    r.add_argument("--max-model-len", type=int, default=None, metavar="N",
                   help="context window in tokens (default: the model's)")
    add_json_option(p, "the text, token ids, counts and timings")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from dopd.engine.engine_options import EngineOptions
    from dopd.engine.llm_engine import LLMEngine
    from dopd.engine.model import SamplingParams
    from dopd.errors import require

    require(args.threads is None or args.threads >= 1,
            f"--threads must be >= 1, got {args.threads}")
    check_device(args.device)
    json_path = check_output_file(args.json)
    as_json = json_to_stdout(args.json)
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=tuple(args.stop),
        ignore_eos=args.ignore_eos,
    )
    options = EngineOptions(threads=args.threads, max_model_len=args.max_model_len,
                            seed=args.seed)
    engine = LLMEngine.from_pretrained(args.model, options, device=args.device, dtype=args.dtype)
    threads = args.threads if args.threads is not None else set_default_threads(engine)
    prompt: str | list[int] = args.prompt
    if args.chat:
        require(engine.tokenizer is not None, f"model {args.model} has no tokenizer")
        assert engine.tokenizer is not None
        prompt = engine.tokenizer.encode_chat([{"role": "user", "content": args.prompt}])
    start = time.perf_counter()
    first_at: float | None = None
    token_ids: list[int] = []
    text: list[str] = []
    reason = None
    prompt_tokens = 0
    for out in engine.stream(prompt, params):
        if first_at is None:
            first_at = time.perf_counter()
        prompt_tokens = out.num_prompt_tokens
        token_ids.extend(out.new_token_ids)
        text.append(out.new_text)
        if not as_json:
            sys.stdout.write(out.new_text)
            sys.stdout.flush()
        reason = out.finish_reason
    elapsed = time.perf_counter() - start
    ttft = (first_at or start) - start
    decode_rate = (len(token_ids) - 1) / (elapsed - ttft) if len(token_ids) > 1 else None
    result = {
        "model": args.model,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(token_ids),
        "text": "".join(text),
        "token_ids": token_ids,
        "finish_reason": None if reason is None else str(reason),
        "ttft_s": round(ttft, 6),
        "elapsed_s": round(elapsed, 6),
        "decode_tokens_per_s": None if decode_rate is None else round(decode_rate, 2),
        "threads": threads,
    }
    if args.json is not None:
        emit_json(args.json, result)
    if not as_json:
        print()
        rate = "" if decode_rate is None else f", {decode_rate:.1f} tokens/s decode"
        wrote = "" if json_path is None else f", wrote {json_path}"
        print(f"[{len(token_ids)} tokens, finish {result['finish_reason']}, "
              f"TTFT {ttft * 1e3:.0f} ms{rate}, {threads} thread(s){wrote}]", file=sys.stderr)
    return 0


def set_default_threads(engine: Any) -> int:
    """Set torch's threads for ``engine``'s model by :func:`default_threads` (this process
    alone, less the cores other work keeps busy); returns the count."""
    import torch

    cfg = engine.model.config
    params = approx_params(cfg.hidden_size, cfg.intermediate_size, cfg.num_layers,
                           cfg.vocab_size, cfg.num_kv_heads * cfg.head_dim)
    threads = default_threads(params, available_cores(), busy=busy_cores())
    torch.set_num_threads(threads)
    return threads
