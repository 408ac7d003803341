"""The FastAPI app of the front end (:func:`create_app`).

Routes: ``POST /v1/completions`` and ``/v1/chat/completions`` (streaming by server-sent events
or not, with usage counts), ``GET /v1/models``, ``/health``, ``/metrics`` (Prometheus),
``/v1/cluster`` (instances, roles, states, loads, recent decisions, history), ``POST
/v1/admin/switch`` (a live role switch) and ``GET /dashboard``. Every error is an OpenAI error
object with a 4xx status for bad input (malformed JSON, unknown model, bad ``max_tokens``,
prompt too long, wrong API key) or 503 when no instance can serve. ``/v1/*`` needs the API key
(``Authorization: Bearer``) when one is configured.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.responses import StreamingResponse as _Streaming
from pydantic import BaseModel, ValidationError

from dopd.errors import DopdError
from dopd.serve.dashboard import DASHBOARD_HTML
from dopd.serve.dispatch import Tracked
from dopd.serve.errors import ServeError
from dopd.serve.metrics import CONTENT_TYPE
from dopd.serve.protocol import (
    ChatRequest,
    CompletionRequest,
    chat_body,
    chat_chunk,
    completion_body,
    completion_chunk,
    new_id,
    usage,
)
from dopd.serve.server import ServeRuntime
from dopd.types import InstanceState, Role


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()))
    return (f"{loc}: {err.get('msg', 'invalid value')}" if loc else err.get("msg", "invalid"),
            loc or None)


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ServeError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ServeError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = _validation_message(exc)
        raise ServeError(400, message, param=param) from None


def create_app(runtime: ServeRuntime) -> FastAPI:
    """The app over ``runtime``; its lifespan starts and stops the runtime."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        app.state.started = True
        cfg = runtime.config
        print(f"dopd serve: {runtime.model_name} on {cfg.instances} {cfg.mode} worker(s), "
              f"policy {cfg.policy}, listening on http://{cfg.host}:{cfg.port}", flush=True)
        try:
            yield
        finally:
            await runtime.stop()
            print("dopd serve: stopped", file=sys.stderr, flush=True)

    app = FastAPI(title="dopd", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.started = False
    metrics = runtime.metrics
    dispatcher = runtime.dispatcher
    api_key = runtime.config.api_key

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return ServeError(500, f"internal error: {type(exc).__name__}: {exc}").response()

    @app.middleware("http")
    async def _auth_and_count(request: Request, call_next: Callable[..., Any]) -> Response:
        path = request.url.path
        if api_key is not None and path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            if header != f"Bearer {api_key}":
                metrics.requests.labels(path, "401").inc()
                return ServeError(401, "incorrect or missing API key",
                                  code="invalid_api_key").response()
        response: Response = await call_next(request)
        if path.startswith("/v1/"):
            metrics.requests.labels(path, str(response.status_code)).inc()
        return response

    def check_model(name: str) -> None:
        if name != runtime.model_name:
            raise ServeError(404, f"the model {name!r} does not exist; this server serves "
                             f"{runtime.model_name!r}", code="model_not_found", param="model")

    def start(ids: list[int], params_req: Any, t0: float) -> Tracked:
        params = params_req.sampling(len(ids), runtime.max_model_len,
                                     runtime.config.default_max_tokens)
        tracked = dispatcher.submit(ids, params)
        metrics.router.observe(time.perf_counter() - t0)
        return tracked

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        t0 = time.perf_counter()
        req: CompletionRequest = await _parse(request, CompletionRequest)
        check_model(req.model)
        prompt = req.single_prompt()
        ids = _encode(runtime, prompt)
        tracked = start(ids, req, t0)
        rid = new_id("cmpl")
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            def chunk(text: str, reason: str | None, tok: list[int] | None) -> dict[str, Any]:
                return completion_chunk(rid, req.model, text, reason, tok)

            return _stream(tracked, chunk, None, rid, req.model, include_usage,
                           req.return_token_ids, "text_completion")
        text, reason, toks = await _collect(dispatcher, tracked)
        return JSONResponse(completion_body(rid, req.model, text, reason, len(ids), len(toks),
                                            toks if req.return_token_ids else None))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        t0 = time.perf_counter()
        req: ChatRequest = await _parse(request, ChatRequest)
        check_model(req.model)
        try:
            ids = runtime.tokenizer.encode_chat(req.plain_messages())
        except DopdError as exc:
            raise ServeError(400, str(exc), param="messages") from None
        tracked = start(ids, req, t0)
        rid = new_id("chatcmpl")
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            def chunk(text: str, reason: str | None, tok: list[int] | None) -> dict[str, Any]:
                delta = {"content": text} if text or reason is None else {}
                return chat_chunk(rid, req.model, delta, reason, tok)

            first = chat_chunk(rid, req.model, {"role": "assistant", "content": ""}, None)
            return _stream(tracked, chunk, first, rid, req.model, include_usage,
                           req.return_token_ids, "chat.completion.chunk")
        text, reason, toks = await _collect(dispatcher, tracked)
        return JSONResponse(chat_body(rid, req.model, text, reason, len(ids), len(toks),
                                      toks if req.return_token_ids else None))

    def _stream(tracked: Tracked, chunk: Callable[..., dict[str, Any]],
                first: dict[str, Any] | None, rid: str, model: str, include_usage: bool,
                with_ids: bool, obj: str) -> Response:
        async def events() -> AsyncIterator[bytes]:
            n_out = 0
            done = False
            try:
                if first is not None:
                    yield _sse(first)
                while True:
                    ev = await tracked.queue.get()
                    if ev.kind == "delta":
                        n_out += len(ev.token_ids)
                        yield _sse(chunk(ev.text, None, list(ev.token_ids) if with_ids
                                         else None))
                        continue
                    done = True
                    if ev.kind == "error":
                        yield _sse(ServeError(ev.status, ev.message).body())
                    else:
                        yield _sse(chunk("", ev.finish_reason, [] if with_ids else None))
                        if include_usage:
                            yield _sse({"id": rid, "object": obj, "created": int(time.time()),
                                        "model": model, "choices": [],
                                        "usage": usage(len(tracked.prompt_ids), n_out)})
                    yield b"data: [DONE]\n\n"
                    return
            finally:
                if not done:
                    dispatcher.abort(tracked.rid)

        return _Streaming(events(), media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache"})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": runtime.model_name, "object": "model",
                                            "created": 0, "owned_by": "dopd",
                                            "max_model_len": runtime.max_model_len}]}

    @app.get("/health")
    async def health() -> JSONResponse:
        active = sum(1 for h in runtime.cluster.instances.values()
                     if h.state == InstanceState.ACTIVE)
        ok = app.state.started and active > 0 and dispatcher.admitting
        return JSONResponse({"status": "ok" if ok else "unavailable", "active_instances": active},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(runtime.cluster.instances.values()),
                        media_type=CONTENT_TYPE)

    @app.get("/v1/cluster")
    async def cluster() -> dict[str, Any]:
        return cluster_state(runtime)

    @app.post("/v1/admin/switch")
    async def switch(request: Request) -> JSONResponse:
        req: SwitchRequest = await _parse(request, SwitchRequest)
        decision = runtime.controller.switch(req.instance, Role(req.role),
                                             req.reason or "admin request")
        return JSONResponse({"decision": decision}, status_code=202)

    @app.get("/dashboard")
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(DASHBOARD_HTML)

    @app.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    return app


class SwitchRequest(BaseModel):
    """``POST /v1/admin/switch`` body."""

    instance: int
    role: str
    reason: str | None = None

    def model_post_init(self, context: Any) -> None:
        if self.role not in {str(r) for r in Role}:
            raise ValueError(f"role must be one of {', '.join(str(r) for r in Role)}")


def _encode(runtime: ServeRuntime, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        return runtime.tokenizer.encode(prompt)
    vocab = runtime.tokenizer.vocab_size
    if any(t < 0 or t >= vocab for t in prompt):
        raise ServeError(400, f"prompt token id out of the vocabulary [0, {vocab})",
                         param="prompt")
    return list(prompt)


async def _collect(dispatcher: Any, tracked: Tracked) -> tuple[str, str | None, list[int]]:
    parts: list[str] = []
    toks: list[int] = []
    finished = False
    try:
        while True:
            ev = await tracked.queue.get()
            if ev.kind == "delta":
                parts.append(ev.text)
                toks.extend(ev.token_ids)
            elif ev.kind == "error":
                finished = True
                raise ServeError(ev.status, ev.message)
            else:
                finished = True
                return "".join(parts), ev.finish_reason, toks
    finally:
        if not finished:
            dispatcher.abort(tracked.rid)


def cluster_state(runtime: ServeRuntime) -> dict[str, Any]:
    """The ``/v1/cluster`` document."""
    ctl = runtime.controller
    counts = {str(r): 0 for r in Role}
    instances = []
    for iid, h in sorted(runtime.cluster.instances.items()):
        if h.state == InstanceState.ACTIVE:
            counts[str(h.role)] += 1
        instances.append({"id": iid, "role": str(h.role), "state": str(h.state),
                          "target_role": None if h.target_role is None else str(h.target_role),
                          "pid": h.pid, "restarts": h.restarts,
                          "load": runtime.dispatcher.holding(iid), "stats": h.stats})
    cfg = runtime.config
    return {"model": runtime.model_name, "mode": cfg.mode, "policy": cfg.policy,
            "time_s": round(ctl.now(), 3), "counts": counts, "instances": instances,
            "in_flight": len(runtime.dispatcher.tracked), "arrived": ctl.arrived,
            "finished": ctl.finished, "role_switches": ctl.switches,
            "decisions": list(ctl.decisions)[-50:], "history": list(ctl.history)[-300:]}
