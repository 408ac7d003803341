"""A fake OpenAI-compatible server for the load generator's tests: FastAPI + uvicorn on a free
local port, in a thread, streaming tokens with set delays and misbehaving on cue
(:data:`FAIL_500` ... :data:`HOLD` as ``max_tokens``). Used by ``test_loadgen.py`` and
``tests/cli/test_bench_cmd.py``."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

MODEL = "fake-model"
FAIL_500, REJECT_429, BREAK, NO_FINISH, HANG, ERROR_EVENT, HOLD = 13, 29, 17, 23, 19, 31, 37
"""Output lengths (max_tokens) at which the fake server misbehaves in the named way."""


@dataclass
class Behaviour:
    """How the fake server answers: the first token ``ttft_s`` after the request, then one
    token every ``tpot_s`` (deadlines from the request's receipt, so no drift), sent
    ``tokens_per_chunk`` at a time; ``usage`` says whether it honours ``include_usage``;
    ``sse=False`` ignores ``stream: true`` and answers with one JSON body; each token's text is
    ``text_char`` (written unescaped, as vLLM does) and event lines end with ``line_end``."""

    ttft_s: float = 0.05
    tpot_s: float = 0.01
    tokens_per_chunk: int = 1
    usage: bool = True
    sse: bool = True
    models: tuple[str, ...] = (MODEL,)
    max_model_len: int | None = None
    api_key: str | None = None
    text_char: str = "x"
    line_end: str = "\n"


@dataclass
class Seen:
    """One request as the server saw it: perf_counter at receipt, the body, the path."""

    at: float
    body: dict[str, Any]
    path: str


@dataclass
class FakeServer:
    """An OpenAI-compatible streaming server in a background thread (see :class:`Behaviour`)."""

    behaviour: Behaviour = field(default_factory=Behaviour)
    seen: list[Seen] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    url: str = ""

    def reset(self, **changes: Any) -> None:
        self.behaviour = Behaviour(**changes)
        self.seen.clear()
        self.max_active = 0

    def app(self) -> FastAPI:
        app = FastAPI()

        def authorized(request: Request) -> bool:
            key = self.behaviour.api_key
            return key is None or request.headers.get("authorization") == f"Bearer {key}"

        @app.get("/v1/models")
        async def models(request: Request) -> Any:
            if not authorized(request):
                return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
            extra = ({} if self.behaviour.max_model_len is None
                     else {"max_model_len": self.behaviour.max_model_len})
            return {"object": "list", "data": [{"id": m, "object": "model", **extra}
                                               for m in self.behaviour.models]}

        async def answer(request: Request, chat: bool) -> Any:
            at = time.perf_counter()
            body = await request.json()
            self.seen.append(Seen(at, body, request.url.path))
            if not authorized(request):
                return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
            n = int(body["max_tokens"])
            if n == FAIL_500:
                return JSONResponse({"error": {"message": "boom"}}, status_code=500)
            if n == REJECT_429:
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=429)
            prompt = body["messages"][0]["content"] if chat else body["prompt"]
            if not self.behaviour.sse:
                await asyncio.sleep(self.behaviour.ttft_s + (n - 1) * self.behaviour.tpot_s)
                return {"choices": [{"index": 0, "text": "x" * n, "finish_reason": "length"}],
                        "usage": {"prompt_tokens": len(prompt.encode()) + 1,
                                  "completion_tokens": n}}
            return StreamingResponse(self._events(at, n, len(prompt.encode()) + 1, chat, body),
                                     media_type="text/event-stream")

        @app.post("/v1/completions")
        async def completions(request: Request) -> Any:
            return await answer(request, chat=False)

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            return await answer(request, chat=True)

        return app

    async def _events(self, at: float, n: int, prompt_tokens: int, chat: bool,
                      body: dict[str, Any]) -> AsyncIterator[str]:
        b = self.behaviour
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if chat:  # the role-only first chunk real servers send: not a token
                yield _sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}, b.line_end)
            sent = 0
            while sent < n:
                k = min(b.tokens_per_chunk, n - sent)
                last = sent + k - 1
                delay = at + b.ttft_s + last * b.tpot_s - time.perf_counter()
                if n == HANG:
                    delay = 60.0
                await asyncio.sleep(max(delay, 0.0))
                if n == BREAK and sent >= n // 2:
                    raise RuntimeError("connection dropped mid-stream")
                if n == NO_FINISH and sent + k == n:
                    return
                if n == ERROR_EVENT and sent == 2:
                    yield _sse({"error": {"message": "engine died", "code": 500}}, b.line_end)
                    return
                text = b.text_char * k
                finish = "length" if sent + k == n else None
                choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
                choice.update({"delta": {"content": text}} if chat else {"text": text})
                yield _sse({"choices": [choice]}, b.line_end)
                sent += k
            if b.usage and body.get("stream_options", {}).get("include_usage"):
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                         "total_tokens": prompt_tokens + n}
                yield _sse({"choices": [], "usage": usage}, b.line_end)
            yield f"data: [DONE]{b.line_end * 2}"
            if n == HOLD:  # a server that keeps the body open after [DONE]
                await asyncio.sleep(30)
        finally:
            self.active -= 1


def _sse(obj: dict[str, Any], line_end: str = "\n") -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}{line_end * 2}"


def serve_fake() -> Iterator[FakeServer]:
    """Start a :class:`FakeServer` on a free 127.0.0.1 port; stop it when the generator ends."""
    fake = FakeServer()
    # proto=IPPROTO_TCP matters: asyncio only disables Nagle's algorithm on sockets that say
    # so, and with Nagle every response would stall ~40 ms on the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(fake.app(), log_level="warning", lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "fake server did not start"
        time.sleep(0.01)
    try:
        yield fake
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        sock.close()
