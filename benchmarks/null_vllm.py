"""A null upstream for ``bench_vllm_proxy.py --upstream null``: the part of ``vllm serve``'s HTTP
API that dopd's vLLM backend and a P/D client call, answered at once, so that a side-by-side
comparison measures the proxy alone (a CPU vLLM's own jitter, hundreds of milliseconds, hides a
proxy's few).

Endpoints: ``GET /health``; ``GET /v1/models`` (one model, its ``max_model_len``); ``GET
/metrics`` (vLLM's gauges and counters, all zero); ``POST /v1/completions``: non-streamed, one
token and, for a prefill (``kv_transfer_params.do_remote_decode``), ``kv_transfer_params`` for
the decode; streamed (SSE), ``max_tokens`` chunks of one token each, then ``[DONE]``. Tokens are
``(prompt length + i) % vocab``. Loopback only.

    python3 benchmarks/null_vllm.py --port 8100
"""

from __future__ import annotations

import argparse
import json
import time

from aiohttp import web

METRICS = "".join(f"{name} 0.0\n" for name in (
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:num_preemptions_total"))


def make_app(model: str, max_model_len: int, vocab: int) -> web.Application:
    """The null upstream's routes."""

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="")

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": model, "object": "model", "max_model_len": max_model_len}]})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=METRICS, content_type="text/plain")

    async def completions(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            prompt = body["prompt"]
            max_tokens = int(body.get("max_tokens") or 16)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": {"message": f"bad request: {exc}",
                                                "code": 400}}, status=400)
        n = len(prompt)
        kv = body.get("kv_transfer_params") or {}
        if not body.get("stream"):
            answer: dict[str, object] = {
                "id": "cmpl-null", "object": "text_completion", "created": int(time.time()),
                "model": model, "choices": [{"index": 0, "text": "x", "token_ids": [n % vocab],
                                             "finish_reason": "length"}]}
            if kv.get("do_remote_decode"):
                answer["kv_transfer_params"] = {"do_remote_prefill": True,
                                                "remote_engine_id": "null", "remote_block_ids": [],
                                                "remote_host": "127.0.0.1", "remote_port": 0}
            return web.json_response(answer)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(max_tokens):
            last = i == max_tokens - 1
            chunk = {"id": "cmpl-null", "object": "text_completion", "model": model,
                     "choices": [{"index": 0, "text": "x", "token_ids": [(n + i) % vocab],
                                  "finish_reason": "length" if last else None}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/completions", completions)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", default="null")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=256)
    args = ap.parse_args()
    web.run_app(make_app(args.model, args.max_model_len, args.vocab), host="127.0.0.1",
                port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
