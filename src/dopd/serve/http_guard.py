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
        _in_body = False

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
            if not self._in_body:
                self._header_bytes += len(data)
                if self._header_bytes > max_header_bytes:
                    self.transport.close()
                    return
                if self._read_timer is None:
                    self._arm()  # a request starts on a kept-alive connection
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._in_body = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            self._in_body = False
            self._header_bytes = 0
            super().on_response_complete()

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
