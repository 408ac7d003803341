"""The hot path of the front end: ``POST /v1/completions`` and ``POST /v1/chat/completions`` as
plain ASGI handlers (:class:`CompletionsHandler`), outside FastAPI's routing and middleware.

A request's body is validated by pydantic straight from its bytes, its prompt tokenized and
submitted to the dispatcher; the answer is one JSON body, or server-sent events built from
per-request byte templates (:class:`~dopd.serve.protocol.StreamChunks`) where the events that
are already waiting go out in one write. A client that goes away has its request aborted (a
watcher waits for ``http.disconnect``). Errors before the answer starts are OpenAI error
objects: 4xx for bad input, 503 when nothing can serve, 500 for a bug; an error after a stream
started is its last event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dopd.serve.errors import ServeError
from dopd.serve.in_flight import Event, Tracked
from dopd.serve.prompts import PromptEncoder
from dopd.serve.protocol import (
    ChatRequest,
    CompletionRequest,
    StreamChunks,
    chat_body,
    completion_body,
    new_id,
    sse,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
M = TypeVar("M", bound=BaseModel)

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache")]
_DONE = b"data: [DONE]\n\n"
_GONE = Event("disconnect")


def parse(raw: bytes, model: type[M]) -> M:
    """``model`` from a JSON body; ServeError 400 naming the bad field otherwise."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        if err.get("type") == "json_invalid":
            raise ServeError(400, f"the request body is not valid JSON: {err.get('msg')}") \
                from None
        if err.get("type") == "model_type" and not loc:
            raise ServeError(400, "the request body must be a JSON object") from None
        msg = err.get("msg", "invalid value")
        raise ServeError(400, f"{loc}: {msg}" if loc else msg, param=loc or None) from None


async def send_json(send: Send, status: int, obj: Any,
                    headers: list[tuple[bytes, bytes]] | None = None) -> int:
    """A complete JSON response; returns ``status``."""
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body, "more_body": False})
    return status


async def send_error(send: Send, exc: ServeError,
                     headers: list[tuple[bytes, bytes]] | None = None) -> int:
    return await send_json(send, exc.status, exc.body(), [*exc.headers(), *(headers or [])])


async def _read_body(receive: Receive, headers: list[tuple[bytes, bytes]], limit: int) -> bytes:
    """The whole body; ServeError 413 as soon as its Content-Length or the bytes read so far
    pass ``limit`` (nothing more is read then)."""
    for name, value in headers:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise ServeError(413, f"the request body has {int(value)} bytes, more than this "
                             f"server's limit of {limit} bytes (max_request_bytes)")
    parts: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ServeError(400, "the client disconnected before sending the whole body")
        body = msg.get("body", b"")
        size += len(body)
        if size > limit:
            raise ServeError(413, f"the request body is larger than this server's limit of "
                             f"{limit} bytes (max_request_bytes)")
        parts.append(body)
        if not msg.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def _watch(receive: Receive, queue: asyncio.Queue[Event]) -> None:
    """Puts ``_GONE`` on ``queue`` when the client disconnects."""
    while (await receive())["type"] != "http.disconnect":
        pass
    queue.put_nowait(_GONE)


class CompletionsHandler:
    """Serves the completion endpoints of ``runtime`` (a :class:`~dopd.serve.runtime.
    ServeRuntime`); see the module docstring."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.dispatcher = runtime.dispatcher
        self.metrics = runtime.metrics
        self.tokenizer = runtime.tokenizer
        self.model_name: str = runtime.model_name
        self.default_max: int = runtime.config.default_max_tokens
        self.max_body: int = runtime.config.max_request_bytes
        self.prompts = PromptEncoder(runtime.tokenizer, lambda: runtime.max_model_len)

    async def __call__(self, receive: Receive, send: Send, t0: float, chat: bool,
                       headers: list[tuple[bytes, bytes]] | None = None) -> int:
        """Serve one request that reached the app at ``t0`` (``time.perf_counter``) with
        ``headers`` (the ASGI scope's); returns its HTTP status."""
        try:
            raw = await _read_body(receive, headers or [], self.max_body)
            if chat:
                creq = parse(raw, ChatRequest)
                self._check_model(creq.model)
                ids = await self.prompts.chat(creq.plain_messages())
                req: ChatRequest | CompletionRequest = creq
            else:
                req = parse(raw, CompletionRequest)
                self._check_model(req.model)
                ids = await self._encode(req.single_prompt())
            params = req.sampling(len(ids), self.runtime.max_model_len, self.default_max)
            tracked = self.dispatcher.submit(ids, params)
        except ServeError as exc:
            if exc.status == 429 and exc.retry_after is None:
                exc.retry_after = 1
            return await send_error(send, exc)
        except Exception as exc:
            return await send_error(send, ServeError(
                500, f"internal error: {type(exc).__name__}: {exc}"))
        tracked.t_http = t0
        tracked.t_submit = now = time.perf_counter()
        self.metrics.router.observe(now - t0)
        rid = new_id("chatcmpl" if chat else "cmpl")
        watcher = asyncio.ensure_future(_watch(receive, tracked.queue))
        try:
            if req.stream:
                await self._stream(send, tracked, req, StreamChunks(rid, req.model, chat))
                return 200
            return await self._collect(send, tracked, req, rid, chat)
        finally:
            watcher.cancel()

    def _check_model(self, name: str) -> None:
        if name != self.model_name:
            raise ServeError(404, f"the model {name!r} does not exist; this server serves "
                             f"{self.model_name!r}", code="model_not_found", param="model")

    async def _encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return await self.prompts.text(prompt)
        vocab = self.tokenizer.vocab_size
        if any(t < 0 or t >= vocab for t in prompt):
            raise ServeError(400, f"prompt token id out of the vocabulary [0, {vocab})",
                             param="prompt")
        return list(prompt)

    async def _stream(self, send: Send, tracked: Tracked, req: ChatRequest | CompletionRequest,
                      chunks: StreamChunks) -> None:
        with_ids = req.return_token_ids
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        queue = tracked.queue
        n_out = 0
        done = False
        first_pending = False  # the first token is in ``out``, not written yet
        # The chat role chunk goes out with the first token (as vLLM does), so clients that
        # time TTFT from the first chunk measure the prefill, not the HTTP round trip.
        role_pending = chunks.chat
        out: list[bytes] = []
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            while True:
                if queue.empty() and out:
                    await send({"type": "http.response.body", "body": b"".join(out),
                                "more_body": True})
                    out.clear()
                    if first_pending:
                        first_pending = False
                        self._record(tracked)
                ev = await queue.get()
                if role_pending and ev is not _GONE:
                    role_pending = False
                    out.append(chunks.role())
                if ev.kind == "delta":
                    if n_out == 0 and ev.token_ids:
                        first_pending = True
                    n_out += len(ev.token_ids)
                    out.append(chunks.delta(ev.text, list(ev.token_ids) if with_ids else None))
                    continue
                if ev is _GONE:
                    return
                done = True
                if ev.kind == "error":
                    out.append(sse(ServeError(ev.status, ev.message).body()))
                else:
                    out.append(chunks.final(ev.finish_reason, with_ids))
                    if include_usage:
                        out.append(chunks.usage(len(tracked.prompt_ids), n_out))
                out.append(_DONE)
                await send({"type": "http.response.body", "body": b"".join(out),
                            "more_body": False})
                if first_pending:
                    self._record(tracked)
                return
        finally:
            if not done:
                self.dispatcher.abort(tracked.rid)

    def _record(self, tracked: Tracked) -> None:
        if tracked.t_event:
            self.metrics.frontend.record(tracked.t_submit - tracked.t_http,
                                         time.perf_counter() - tracked.t_event)

    async def _collect(self, send: Send, tracked: Tracked, req: ChatRequest | CompletionRequest,
                       rid: str, chat: bool) -> int:
        parts: list[str] = []
        toks: list[int] = []
        finished = False
        try:
            while True:
                ev = await tracked.queue.get()
                if ev.kind == "delta":
                    parts.append(ev.text)
                    toks.extend(ev.token_ids)
                    continue
                if ev is _GONE:
                    return 499  # nobody to answer: the client closed the connection
                finished = True
                if ev.kind == "error":
                    return await send_error(send, ServeError(ev.status, ev.message,
                                                             retry_after=ev.retry_after))
                make = chat_body if chat else completion_body
                return await send_json(send, 200, make(
                    rid, req.model, "".join(parts), ev.finish_reason, len(tracked.prompt_ids),
                    len(toks), toks if req.return_token_ids else None))
        finally:
            if not finished:
                self.dispatcher.abort(tracked.rid)
