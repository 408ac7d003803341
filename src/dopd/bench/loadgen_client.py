"""HTTP side of the load generator: request bodies, one streamed request, and the server probe.

Works with any OpenAI-compatible server (dopd serve, vLLM, SGLang, ...): ``POST
/v1/completions`` or ``/v1/chat/completions`` with ``stream: true`` and
``stream_options.include_usage``, read as server-sent events (``data: {json}`` lines ending with
``data: [DONE]``). A *content chunk* is an event whose first choice carries non-empty text
(``text``, or ``delta.content`` for chat); the token count is the ``usage.completion_tokens`` the
server reports, or the number of content chunks when it reports none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import certifi
import httpx

from dopd.errors import DopdError, require

ENDPOINTS: dict[str, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
"""``--endpoint`` name -> path under the server's base URL."""

_MESSAGE_CHARS = 120
_DRAIN_S = 1.0


@dataclass(frozen=True, slots=True)
class StreamResult:
    """What the client saw of one request; times on the caller's clock, NaN where never reached.

    ``last_token_s`` is the arrival of the last content chunk, ``done_s`` the moment the request
    ended (complete, failed or timed out); ``chunks`` counts content
    chunks; ``completion_tokens`` / ``prompt_tokens`` are the server's ``usage`` figures (None
    when it sent none); ``status`` is the HTTP status (0 when no response came); ``error`` is
    empty for a complete stream, else a one-line reason (``HTTP 503: ...``, ``timeout after
    5 s``, ``connection error: ...``).
    """

    send_s: float
    first_token_s: float
    last_token_s: float
    done_s: float
    chunks: int
    completion_tokens: int | None
    prompt_tokens: int | None
    status: int
    error: str

    @property
    def tokens(self) -> int:
        """Output tokens: the server's usage count, else the content chunks."""
        return self.completion_tokens if self.completion_tokens is not None else self.chunks


def base_url(url: str) -> str:
    """``http(s)://host[:port][/prefix]`` without a trailing ``/`` or ``/v1``.

    Raises :class:`DopdError` for anything that is not an http(s) URL with a host.
    """
    text = url.strip().rstrip("/")
    parts = urlsplit(text)
    require(parts.scheme in ("http", "https") and bool(parts.netloc),
            f"server URL must look like http://host:port, got {url!r}")
    return text.removesuffix("/v1")


def request_body(
    endpoint: str,
    model: str,
    prompt: str,
    max_tokens: int,
    *,
    ignore_eos: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of one streamed request asking for exactly ``max_tokens`` tokens.

    ``ignore_eos`` sends vLLM's (and SGLang's, and dopd's) ``ignore_eos: true`` so the output
    has the requested length; servers that reject unknown fields (OpenAI's own API) need it off.
    ``extra`` fields (for example ``min_tokens``) are merged last and win.
    """
    require(endpoint in ENDPOINTS, f"unknown endpoint {endpoint!r}; use one of "
            f"{', '.join(ENDPOINTS)}")
    body: dict[str, Any] = {"model": model}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    body.update(max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
    if ignore_eos:
        body["ignore_eos"] = True
    body.update(extra or {})
    return body


def _error_message(payload: Any) -> str:
    """The human message of an OpenAI-style error object (``{"error": {...}}`` or vLLM's
    ``{"object": "error", "message": ...}``), or ''."""
    if not isinstance(payload, Mapping):
        return ""
    inner = payload.get("error", payload)
    if isinstance(inner, Mapping):
        message = inner.get("message") or inner.get("detail") or ""
    else:
        message = inner
    if not message and "detail" in payload:
        message = payload["detail"]
    return " ".join(str(message).split())[:_MESSAGE_CHARS]


def _is_error(chunk: Mapping[str, Any]) -> bool:
    return "error" in chunk or chunk.get("object") == "error"


def _choice_text(chunk: Mapping[str, Any]) -> tuple[str, bool]:
    """(text of the first choice, whether it carries a finish reason)."""
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], Mapping):
        return "", False
    choice = choices[0]
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, Mapping) else choice.get("text")
    return (text if isinstance(text, str) else ""), choice.get("finish_reason") is not None


class _Accumulator:
    """Mutable per-request state, so a timeout keeps what was received before it."""

    def __init__(self, send_s: float) -> None:
        self.send_s = send_s
        self.first = math.nan
        self.last = math.nan
        self.chunks = 0
        self.completion_tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.status = 0
        self.error = ""
        self.complete = False

    def chunk(self, chunk: Mapping[str, Any], now: float) -> None:
        text, finished = _choice_text(chunk)
        if text:
            if math.isnan(self.first):
                self.first = now
            self.last = now
            self.chunks += 1
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            if isinstance(usage.get("completion_tokens"), int):
                self.completion_tokens = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                self.prompt_tokens = usage["prompt_tokens"]
        if finished:
            self.end(now)

    def end(self, now: float) -> None:
        """The server says the answer is complete."""
        self.complete = True
        if math.isnan(self.first):  # an answer whose text was all empty: its end is its start
            self.first = self.last = now

    def result(self, done_s: float) -> StreamResult:
        error = self.error or ("" if self.complete else "stream ended before the answer did")
        return StreamResult(self.send_s, self.first, self.last, done_s, self.chunks,
                            self.completion_tokens, self.prompt_tokens, self.status, error)


async def sse_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The lines of an event stream, split only where SSE ends a line (CRLF, LF or CR).

    ``httpx``'s ``aiter_lines`` also splits on U+0085, U+2028 and U+2029, which JSON strings
    may carry unescaped; that cut a valid event in two.
    """
    buf = b""
    async for chunk in chunks:
        buf += chunk
        start = 0
        while True:
            cut = min((i for i in (buf.find(b"\n", start), buf.find(b"\r", start)) if i >= 0),
                      default=-1)
            if cut < 0:
                break
            if buf[cut:cut + 1] == b"\r" and cut + 1 == len(buf):
                break  # a CR at the end of a chunk may be the first half of a CRLF
            yield buf[start:cut].decode("utf-8", "replace")
            start = cut + (2 if buf[cut:cut + 2] == b"\r\n" else 1)
        buf = buf[start:]
    if buf:
        yield buf.rstrip(b"\r").decode("utf-8", "replace")


async def _stream(client: httpx.AsyncClient, path: str, body: Mapping[str, Any],
                  acc: _Accumulator, clock: Callable[[], float]) -> None:
    async with client.stream("POST", path, json=body) as response:
        acc.status = response.status_code
        if response.status_code != 200:
            raw = await response.aread()
            try:
                message = _error_message(json.loads(raw))
            except ValueError:
                message = " ".join(raw.decode("utf-8", "replace").split())[:_MESSAGE_CHARS]
            acc.error = f"HTTP {response.status_code}" + (f": {message}" if message else "")
            return
        if "text/event-stream" not in response.headers.get("content-type", ""):
            whole = json.loads(await response.aread())  # a server that ignored stream: true
            if _is_error(whole):
                acc.error = f"server error: {_error_message(whole)}"
                return
            acc.chunk(whole, clock())
            return
        lines = sse_lines(response.aiter_bytes())
        async for line in lines:
            if not line.startswith("data:"):
                continue  # blank separators, ": keep-alive" comments, "event:" lines
            payload = line[5:].strip()
            if payload == "[DONE]":
                acc.end(clock())
                break
            now = clock()
            chunk = json.loads(payload)
            if _is_error(chunk):
                acc.error = f"stream error: {_error_message(chunk)}"
                return
            acc.chunk(chunk, now)
        # Read to the end of the body (normally nothing left): a response closed early closes
        # its connection instead of returning it to the keep-alive pool.
        with contextlib.suppress(TimeoutError, httpx.HTTPError):
            async with asyncio.timeout(_DRAIN_S):
                async for _ in lines:
                    pass


async def stream_request(
    client: httpx.AsyncClient,
    path: str,
    body: Mapping[str, Any],
    clock: Callable[[], float],
    timeout_s: float,
) -> StreamResult:
    """Send one streamed request on ``client`` and record when its tokens arrived.

    Never raises for server or network trouble: an HTTP error status, a broken or malformed
    stream, an error event and ``timeout_s`` passing (counted from the send) all end up in
    :attr:`StreamResult.error`, with whatever arrived before kept.
    """
    acc = _Accumulator(clock())
    try:
        async with asyncio.timeout(timeout_s):
            await _stream(client, path, body, acc, clock)
    except TimeoutError:
        acc.error = f"timeout after {timeout_s:g} s"
    except httpx.HTTPError as exc:
        detail = " ".join(str(exc).split())[:_MESSAGE_CHARS] or type(exc).__name__
        acc.error = f"connection error: {detail}"
    except (ValueError, TypeError, AttributeError) as exc:
        acc.error = f"malformed stream: {type(exc).__name__}"
    return acc.result(clock())


class ClientPool:
    """Keep-alive HTTP clients of one connection each, lent out last-in first-out.

    A single ``httpx.AsyncClient`` rescans all its connections whenever one changes state,
    which is quadratic in the requests in flight: a few hundred in flight saturate a core and
    delay every measurement. Here each request borrows a one-connection client (a new one when
    none is idle), so the cost per request stays constant and connections are still reused.
    """

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        self._url = base_url(url)
        self._headers = dict(headers)
        self._ssl = ssl.create_default_context(cafile=certifi.where())  # shared: 20 ms each
        self._idle: list[httpx.AsyncClient] = []
        self._all: list[httpx.AsyncClient] = []

    @contextlib.asynccontextmanager
    async def borrow(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client for one request; it goes back to the pool when the block ends."""
        if self._idle:
            client = self._idle.pop()
        else:
            client = httpx.AsyncClient(
                base_url=self._url, headers=self._headers, timeout=None, verify=self._ssl,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            )
            self._all.append(client)
        try:
            yield client
        finally:
            self._idle.append(client)

    @property
    def size(self) -> int:
        """Clients (connections) created so far: the most requests that were in flight."""
        return len(self._all)

    async def aclose(self) -> None:
        """Close every client."""
        for client in self._all:
            await client.aclose()
        self._idle.clear()
        self._all.clear()


def auth_headers(api_key: str | None) -> dict[str, str]:
    """``Authorization: Bearer KEY`` when a key is given."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One entry of ``GET /v1/models``: its id and, where the server says (vLLM and dopd do),
    its context window ``max_model_len``."""

    id: str
    max_model_len: int | None = None


def probe_server(
    url: str, api_key: str | None = None, timeout_s: float = 10.0
) -> tuple[ServedModel, ...]:
    """Check that the server at ``url`` answers and return the models it lists.

    Asks ``GET /v1/models``; a server without that route (404) is accepted when ``GET /health``
    answers 200, and then lists no model (). Raises :class:`DopdError` with a one-line reason
    when the server cannot be reached, refuses the key, or answers with an error.
    """
    root = base_url(url)
    headers = auth_headers(api_key)
    try:
        with httpx.Client(base_url=root, headers=headers, timeout=timeout_s) as client:
            response = client.get("/v1/models")
            if response.status_code == 404:
                health = client.get("/health")
                require(health.status_code == 200, f"server at {root} has neither /v1/models "
                        f"nor a healthy /health (HTTP {health.status_code})")
                return ()
    except httpx.HTTPError as exc:
        detail = " ".join(str(exc).split())[:_MESSAGE_CHARS] or type(exc).__name__
        raise DopdError(f"cannot reach the server at {root}: {detail}") from None
    require(response.status_code not in (401, 403),
            f"server at {root} refused the API key (HTTP {response.status_code})")
    require(response.status_code == 200,
            f"server at {root} answered GET /v1/models with HTTP {response.status_code}")
    try:
        data = response.json().get("data", [])
        return tuple(
            ServedModel(str(m["id"]), m.get("max_model_len")
                        if isinstance(m.get("max_model_len"), int) else None)
            for m in data if isinstance(m, Mapping) and "id" in m
        )
    except (ValueError, AttributeError):
        raise DopdError(f"server at {root}: GET /v1/models is not an OpenAI model list") from None
