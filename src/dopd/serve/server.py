"""Start/stop lifecycle of ``dopd serve``: the runtime (:mod:`dopd.serve.runtime`) and the
uvicorn server around the app (:mod:`dopd.serve.api`).

:func:`serve` blocks until SIGINT or SIGTERM; then the server stops accepting connections,
in-flight responses finish (up to ``shutdown_timeout_s``, the grace; then every request still
open ends with a 503 error: an SSE error event and ``data: [DONE]`` on a stream, an error body
otherwise), the workers are stopped, and it returns 0. Connections are guarded against slow
or idle clients (:mod:`dopd.serve.http_guard`).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import sys
from types import FrameType

from dopd.serve.api import create_app
from dopd.serve.live_routing import router_label
from dopd.serve.preflight import bind_listener
from dopd.serve.runtime import ServeRuntime
from dopd.serve.serve_config import ServeConfig

SHUTDOWN_MARGIN_S = 5.0
"""Seconds uvicorn waits past the grace before it cancels what is left (nothing should be)."""


def _log(line: str) -> None:
    print(f"dopd serve: {line}", file=sys.stderr, flush=True)


def serve(config: ServeConfig, listener: socket.socket | None = None) -> int:
    """Run the server until SIGINT/SIGTERM; returns the exit code (0 after a clean stop).

    ``listener`` is the bound HTTP socket (see :func:`dopd.serve.preflight.bind_listener`;
    None: bound here). The workers start, with a line on stderr as each is ready, before
    "listening" is printed; a DopdError from their start-up stops those already running and
    propagates.
    """
    import uvicorn

    from dopd.serve.http_guard import guarded_protocol

    class _Server(uvicorn.Server):
        """uvicorn re-raises a captured SIGTERM/SIGINT after its graceful shutdown, which would
        end the process with 143/130; a stop by signal is a clean exit here."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # the open requests end (finished, or with an error at the grace's end) while
            # uvicorn waits for their connections, well before it would cancel their tasks
            draining = asyncio.create_task(runtime.drain(config.shutdown_timeout_s))
            try:
                await super().shutdown(sockets)
            finally:
                await draining

    sock = listener if listener is not None else bind_listener(config.host, config.port)
    runtime = ServeRuntime(config)
    app = create_app(runtime)
    server = _Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level="warning", access_log=False,
        timeout_graceful_shutdown=int(config.shutdown_timeout_s + SHUTDOWN_MARGIN_S),
        lifespan="off", http=guarded_protocol(config.http_timeout_s, config.max_connections),
        limit_concurrency=config.max_connections, timeout_keep_alive=int(
            max(1, config.http_timeout_s))))

    async def main() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        try:
            # until uvicorn takes over the signals, SIGTERM stops the start-up cleanly
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
            try:
                await runtime.start(_log)
            finally:
                loop.remove_signal_handler(signal.SIGTERM)
            app.state.started = True
            gc.collect()
            gc.freeze()  # start-up objects (models, modules) leave the collector's later scans
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started and not serving.done():
                await asyncio.sleep(0.01)
            if server.started:  # its signal handlers are in place: Ctrl-C / SIGTERM stop it
                host, port = sock.getsockname()[:2]
                print(f"dopd serve: {runtime.model_name} on {config.instances} {config.mode} "
                      f"worker(s), policy {config.policy}, router "
                      f"{router_label(runtime.router)}, listening on http://{host}:{port}",
                      flush=True)
            await serving
        finally:
            await runtime.stop()
            if app.state.started:
                _log("stopped")
        return 0

    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        try:
            return runner.run(main())
        except asyncio.CancelledError:  # SIGTERM during the start-up: workers are stopped
            _log("stopped during start-up")
            return 0
