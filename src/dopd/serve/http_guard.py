"""Connection limits of the HTTP server: read timeouts, header size, connection cap.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive`` but waits forever for
the first request of a connection, for headers sent a byte at a time and for a body that never
ends (slowloris). :func:`guarded_protocol` returns uvicorn's httptools protocol with three
guards more: a request must arrive whole (headers and body) within ``timeout_s`` of the
connection opening or of the previous response, else the connection is closed; headers larger
than ``max_header_bytes`` close it; and a connection beyond ``max_connections`` open at once is
closed as soon as it is accepted (uvicorn's ``limit_concurrency`` answers 503 to requests
beyond it on connections already open).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024


def guarded_protocol(timeout_s: float, max_connections: int,
                     max_header_bytes: int = MAX_HEADER_BYTES) -> type[asyncio.Protocol]:
    """uvicorn's ``http`` protocol class with the guards of the module docstring."""

    class GuardedProtocol(HttpToolsProtocol):
        _read_timer: asyncio.TimerHandle | None = None
        _header_bytes = 0
        _in_message = False

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.close()
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._read_timer is None and not self._in_message:
                self._arm()  # a request starts on a kept-alive connection
            super().data_received(data)

        def on_message_begin(self) -> None:
            self._in_message = True
            self._header_bytes = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count_header(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_header(len(name) + len(value))
            super().on_header(name, value)

        def _count_header(self, n: int) -> None:
            self._header_bytes += n
            if self._header_bytes > max_header_bytes and not self.transport.is_closing():
                self.transport.close()

        def on_message_complete(self) -> None:
            self._disarm()
            self._in_message = False
            super().on_message_complete()

        def _arm(self) -> None:
            self._disarm()
            self._read_timer = self.loop.call_later(timeout_s, self._read_timeout)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _read_timeout(self) -> None:
            self._read_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedProtocol
