"""The two baseline servers of ``bench_frontend_overhead.py``, run as their own processes:

* ``bare``: streams one SSE token at once for every completion request (the HTTP stack);
* ``direct``: forwards each request straight to emulated dopd worker processes, round robin,
  over one ZMQ ROUTER socket (plain socket, loop reader, no futures), with no routing,
  validation or metrics: the least a front end over these workers has to do.

    python3 benchmarks/frontend_baselines.py direct --port 8100 --instances 2
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache")]


def _chunk(rid: str, text: str, reason: str | None) -> bytes:
    return b"data: " + json.dumps(
        {"id": rid, "object": "text_completion", "created": int(time.time()),
         "model": "dopd-tiny", "choices": [{"index": 0, "text": text, "logprobs": None,
                                            "finish_reason": reason}]},
        separators=(",", ":")).encode() + b"\n\n"


async def _body(receive: Receive) -> bytes:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]],
                   chunks: list[bytes]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    for c in chunks:
        await send({"type": "http.response.body", "body": c, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _lifespan(receive: Receive, send: Send, start: Callable[[], Awaitable[None]],
                    stop: Callable[[], Awaitable[None]]) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await start()
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await stop()
            await send({"type": "lifespan.shutdown.complete"})
            return


class BareApp:
    """Streams one token at once for every completion request."""

    ids = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, self.start, self.stop)
        elif scope["path"] == "/health":
            await _respond(send, 200, [(b"content-type", b"application/json")],
                           [b'{"status":"ok"}'])
        else:
            json.loads(await _body(receive))
            rid = f"cmpl-{next(self.ids)}"
            await _respond(send, 200, SSE_HEADERS, [_chunk(rid, "a", None),
                                                    _chunk(rid, "", "length"),
                                                    b"data: [DONE]\n\n"])

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class DirectApp(BareApp):
    """Forwards every request to emulated dopd workers (round robin) over one ZMQ ROUTER: a
    plain socket read by a loop reader callback that drains it, sends without futures."""

    def __init__(self, instances: int) -> None:
        self.instances = instances
        self.queues: dict[int, asyncio.Queue[list[Any]]] = {}
        self.processes: list[Any] = []
        self.ready: set[bytes] = set()

    async def start(self) -> None:
        import multiprocessing as mp

        import zmq

        from dopd.engine.model import SamplingParams, tiny_tokenizer
        from dopd.serve import messages
        from dopd.serve.engines import EngineSpec
        from dopd.serve.wire import pack, unpack
        from dopd.serve.worker import WorkerSpec, worker_main
        from dopd.types import Role

        self.zmq, self.pack, self.unpack, self.messages = zmq, pack, unpack, messages
        self.tokenizer = tiny_tokenizer()
        self.params = SamplingParams(max_tokens=1)
        self.socket = zmq.Context().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.socket.getsockopt(zmq.FD), self.drain)
        ctx = mp.get_context("spawn")
        engine = EngineSpec("dopd-tiny", Role.MIXED, mode="emulated", step_time_scale=0.0)
        for i in range(self.instances):
            spec = WorkerSpec(i, f"tcp://127.0.0.1:{port}", engine)
            self.processes.append(ctx.Process(target=worker_main, args=(spec,), daemon=True))
            self.processes[-1].start()
        deadline = time.monotonic() + 180
        while len(self.ready) < self.instances:
            if time.monotonic() > deadline:
                raise RuntimeError("workers not ready")
            await asyncio.sleep(0.1)
            self.drain()

    def drain(self) -> None:
        zmq = self.zmq
        while self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            ident, data = self.socket.recv_multipart(zmq.NOBLOCK)
            ev = self.messages.decode_event(self.unpack(data))
            if isinstance(ev, self.messages.Ready):
                self.ready.add(ident)
            elif isinstance(ev, self.messages.Output):
                for item in ev.items:
                    q = self.queues.get(item.rid)
                    if q is not None:
                        q.put_nowait(item)

    def send(self, instance: int, msg: Any) -> None:
        self.socket.send_multipart([b"w%d" % instance, self.pack(self.messages.encode(msg))],
                                   self.zmq.NOBLOCK)
        if self.socket.getsockopt(self.zmq.EVENTS) & self.zmq.POLLIN:
            self.loop.call_soon(self.drain)  # the send may have taken the descriptor's edge

    async def stop(self) -> None:
        for i in range(self.instances):
            self.send(i, self.messages.Stop())
        for p in self.processes:
            p.join(10)
            if p.is_alive():
                p.terminate()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await super().__call__(scope, receive, send)
            return
        req = json.loads(await _body(receive))
        rid = next(self.ids)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.queues[rid] = queue
        params = dataclasses.replace(self.params, max_tokens=int(req["max_tokens"]))
        self.send(rid % self.instances, self.messages.Submit(
            rid, tuple(self.tokenizer.encode(req["prompt"])), params))
        name = f"cmpl-{rid}"
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        while True:
            item = await queue.get()
            text, finished = item.text, item.finished
            if text:
                await send({"type": "http.response.body", "body": _chunk(name, text, None),
                            "more_body": True})
            if finished:
                break
        del self.queues[rid]
        await _respond_tail(send, name)


async def _respond_tail(send: Send, name: str) -> None:
    for c in (_chunk(name, "", "length"), b"data: [DONE]\n\n"):
        await send({"type": "http.response.body", "body": c, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def run_baseline(kind: str, port: int, instances: int) -> int:
    import uvicorn

    app = BareApp() if kind == "bare" else DirectApp(instances)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                lifespan="on")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=("bare", "direct"))
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--instances", type=int, default=2)
    args = ap.parse_args()
    return run_baseline(args.kind, args.port, args.instances)


if __name__ == "__main__":
    sys.exit(main())
