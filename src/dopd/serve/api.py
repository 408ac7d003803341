"""The ASGI app of the front end (:func:`create_app`).

Routes: ``POST /v1/completions`` and ``/v1/chat/completions`` (streaming by server-sent events
or not, with usage counts), ``GET /v1/models``, ``/health`` (liveness), ``/ready`` (a request
can be served end to end now), ``/metrics`` (Prometheus),
``/v1/cluster`` (instances, roles, states, loads, the SLO, the policy's latest plan and
forecast, recent decisions with why, history; see :func:`cluster_state`), ``POST
/v1/admin/switch`` (a live role switch), ``GET /dashboard``, and ``GET /debug/frontend`` (exact
per-request front-end latencies of streamed requests; ``POST /debug/frontend/reset`` clears
them). Every error is an OpenAI error object with a 4xx status for bad input (malformed JSON,
unknown model, bad ``max_tokens``, prompt too long, wrong API key) or 503 when no instance can
serve. Access rules (API key, admin key and JSON on admin routes, trusted Host names,
``/metrics`` and ``/debug`` protection) are :mod:`dopd.serve.access`'s, checked before any route.

:class:`FrontEnd` is the outermost app: it stamps each request's arrival, checks access, counts
``/v1`` requests by status, and serves the two completion endpoints itself
(:mod:`dopd.serve.completions`, the hot path); everything else goes to a FastAPI app.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel

from dopd.serve.access import AccessPolicy
from dopd.serve.completions import (
    CompletionsHandler,
    Receive,
    Scope,
    Send,
    parse,
    send_error,
)
from dopd.serve.controller import SETTLE_S, WINDOW_S
from dopd.serve.dashboard import DASHBOARD_HTML
from dopd.serve.errors import ServeError
from dopd.serve.insight import latest_forecast, latest_plan
from dopd.serve.live_routing import router_label
from dopd.serve.metrics import CONTENT_TYPE
from dopd.serve.runtime import ServeRuntime
from dopd.types import InstanceState, Role

_HOT = {"/v1/completions": False, "/v1/chat/completions": True}  # path -> chat


class FrontEnd:
    """The ASGI app of ``dopd serve`` around the FastAPI app ``app`` (see the module docstring).

    ``state`` is the FastAPI app's state (``started`` is True once the runtime is up).
    """

    def __init__(self, app: FastAPI, runtime: ServeRuntime) -> None:
        self.app = app
        self.state = app.state
        self.metrics = runtime.metrics
        self.completions = CompletionsHandler(runtime)
        self.access: AccessPolicy = runtime.access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if not path.startswith("/v1/"):
            refused = self.access.check(scope["method"], path, scope["headers"],
                                        scope.get("client"))
            if refused is not None:
                await send_error(send, refused)
            else:
                await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        try:
            refused = self.access.check(scope["method"], path, scope["headers"],
                                        scope.get("client"))
            if refused is not None:
                status = await send_error(send, refused)
                return
            chat = _HOT.get(path)
            if chat is None:
                status = await self._forward(scope, receive, send)
            elif scope["method"] != "POST":
                status = await send_error(send, ServeError(
                    405, f"{path} accepts POST only"), [(b"allow", b"POST")])
            else:
                status = await self.completions(receive, send, t0, chat, scope["headers"])
        finally:
            self.metrics.count_request(path, status)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> int:
        status = 500

        async def counting_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, counting_send)
        return status


def create_app(runtime: ServeRuntime) -> FrontEnd:
    """The app over ``runtime``; the caller starts and stops the runtime (see
    :func:`dopd.serve.server.serve`) and sets ``state.started`` once it is up."""
    app = FastAPI(title="dopd", docs_url=None, redoc_url=None)
    app.state.started = False
    metrics = runtime.metrics

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return ServeError(500, f"internal error: {type(exc).__name__}: {exc}").response()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": runtime.model_name, "object": "model",
                                            "created": 0, "owned_by": "dopd",
                                            "max_model_len": runtime.max_model_len}]}

    @app.get("/health")
    async def health() -> JSONResponse:
        doc = health_state(runtime, app.state.started)
        return JSONResponse(doc, status_code=200 if doc["status"] == "ok" else 503)

    @app.get("/ready")
    async def ready() -> JSONResponse:
        doc = ready_state(runtime, app.state.started)
        return JSONResponse(doc, status_code=200 if doc["status"] == "ready" else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(runtime.cluster.instances.values()),
                        media_type=CONTENT_TYPE)

    @app.get("/v1/cluster")
    async def cluster() -> dict[str, Any]:
        return cluster_state(runtime)

    @app.post("/v1/admin/switch")
    async def switch(request: Request) -> JSONResponse:
        req = parse(await request.body(), SwitchRequest)
        decision = runtime.controller.switch(req.instance, Role(req.role),
                                             req.reason or "admin request")
        return JSONResponse({"decision": decision}, status_code=202)

    @app.get("/debug/frontend")
    async def frontend_times() -> dict[str, Any]:
        return metrics.frontend.summary() | {
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0]}

    @app.post("/debug/frontend/reset")
    async def frontend_reset() -> dict[str, Any]:
        metrics.frontend.reset()
        return {"reset": True}

    @app.get("/dashboard")
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(DASHBOARD_HTML)

    @app.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    return FrontEnd(app, runtime)


class SwitchRequest(BaseModel):
    """``POST /v1/admin/switch`` body."""

    instance: int
    role: str
    reason: str | None = None

    def model_post_init(self, context: Any) -> None:
        if self.role not in {str(r) for r in Role}:
            raise ValueError(f"role must be one of {', '.join(str(r) for r in Role)}")


def _active(runtime: ServeRuntime) -> dict[str, int]:
    counts = {str(r): 0 for r in Role}
    for h in runtime.cluster.instances.values():
        if h.state == InstanceState.ACTIVE:
            counts[str(h.role)] += 1
    return counts


def health_state(runtime: ServeRuntime, started: bool) -> dict[str, Any]:
    """``/health`` (liveness): ``ok`` while the server runs and can recover, i.e. started, not
    shutting down, and some instance is active, starting or being restarted (a server whose
    every worker is gone for good is ``unavailable``)."""
    cluster = runtime.cluster
    active = sum(_active(runtime).values())
    alive = active > 0 or bool(cluster.restarting) or any(
        h.state != InstanceState.STOPPED for h in cluster.instances.values())
    ok = started and runtime.dispatcher.admitting and alive
    return {"status": "ok" if ok else "unavailable", "active_instances": active,
            "restarting": sorted(cluster.restarting)}


def ready_state(runtime: ServeRuntime, started: bool) -> dict[str, Any]:
    """``/ready``: ``ready`` when a request can be served end to end now: the server admits
    requests and some instance is ACTIVE (a mixed or decode instance serves whole requests;
    prefill instances do too while no decode instance is up). ``counts`` are the ACTIVE
    instances by role."""
    counts = _active(runtime)
    why = ""
    if not started:
        why = "starting"
    elif not runtime.dispatcher.admitting:
        why = "shutting down"
    elif sum(counts.values()) == 0:
        why = "no active instance"
    return {"status": "ready" if not why else "unavailable", "reason": why or None,
            "counts": counts, "restarting": sorted(runtime.cluster.restarting)}


def cluster_state(runtime: ServeRuntime) -> dict[str, Any]:
    """The ``/v1/cluster`` document. Besides the instances and counts: ``slo`` (``ttft_s``,
    ``tpot_s`` in seconds, ``attainment`` a fraction), ``window_s`` (seconds each history point
    summarises) and ``settle_s`` (seconds observed before and after a decision), ``wall_s``
    (the server's Unix time), ``plan`` (the policy's newest plan, a
    :class:`~dopd.serve.insight.PlanView`, or None for a policy that plans nothing),
    ``forecast`` (``rate_rps``, ``upper_rps``: its newest rate forecast, or None),
    ``decisions`` (the last 50 role decisions, see
    :meth:`~dopd.serve.controller.Controller._decide`), ``history`` (the last 300 points
    of :meth:`~dopd.serve.controller.Controller.sample`) and ``calibration`` (the learned
    latency belief: a :class:`~dopd.serve.live_calibration.CalibrationView`)."""
    ctl = runtime.controller
    counts = {str(r): 0 for r in Role}
    books = runtime.dispatcher.books
    instances = []
    for iid, h in sorted(runtime.cluster.instances.items()):
        if h.state == InstanceState.ACTIVE:
            counts[str(h.role)] += 1
        instances.append({"id": iid, "role": str(h.role), "state": str(h.state),
                          "target_role": None if h.target_role is None else str(h.target_role),
                          "pid": h.pid, "restarts": h.restarts,
                          "load": runtime.dispatcher.holding(iid), "stats": h.stats.as_dict(),
                          "book": book.snapshot() if (book := books.get(iid)) else None})
    cfg = runtime.config
    slo = ctl.slo
    plan = latest_plan(ctl.log)
    rate, upper = latest_forecast(ctl.log)
    return {"model": runtime.model_name, "mode": cfg.mode, "policy": cfg.policy,
            "router": router_label(runtime.dispatcher.router),
            "queue_order": runtime.dispatcher.queue_order, "rejected": runtime.dispatcher.rejected,
            "overloaded": runtime.dispatcher.overloaded, "poisoned": runtime.dispatcher.poisoned,
            "stalls": runtime.cluster.stalls,
            "time_s": round(ctl.now(), 3), "counts": counts, "instances": instances,
            "in_flight": len(runtime.dispatcher.tracked), "arrived": ctl.arrived,
            "finished": ctl.finished, "ended": ctl.ended, "role_switches": ctl.switches,
            "wall_s": round(time.time(), 3), "window_s": WINDOW_S, "settle_s": SETTLE_S,
            "slo": None if slo is None else {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s,
                                             "attainment": slo.attainment},
            "plan": None if plan is None else dataclasses.asdict(plan),
            "forecast": None if rate is None else {"rate_rps": rate, "upper_rps": upper},
            "decisions": list(ctl.decisions)[-50:], "history": list(ctl.history)[-300:],
            "calibration": runtime.calibration.snapshot()}
