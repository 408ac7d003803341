"""Fixtures of the serving tests: real ``dopd serve`` processes on free local ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

START_TIMEOUT_S = 150.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running ``dopd serve`` process."""

    proc: subprocess.Popen[str]
    port: int
    api_key: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def get(self, path: str, **kw: object) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers(), timeout=30, **kw)

    def post(self, path: str, body: object, **kw: object) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=self.headers(), timeout=60, **kw)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; kills the process group if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise


def start_server(*args: str, api_key: str | None = None,
                 env: dict[str, str] | None = None) -> Server:
    """A ``dopd serve`` process with ``args``; ``api_key`` goes in ``DOPD_API_KEY`` (not argv),
    ``env`` adds environment variables."""
    port = free_port()
    cmd = [sys.executable, "-m", "dopd.cli.main", "serve", "--port", str(port), *args]
    environ = {**os.environ, **(env or {})}
    if api_key:
        environ["DOPD_API_KEY"] = api_key
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=environ)
    server = Server(proc, port, api_key)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"dopd serve exited with {proc.returncode}: {out[-2000:]}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError("dopd serve did not become healthy in time")


@pytest.fixture(scope="module")
def server_factory() -> Iterator[type]:
    """Start servers with ``factory(*args)``; every one is stopped (and killed if needed)."""
    started: list[Server] = []

    def factory(*args: str, api_key: str | None = None,
                env: dict[str, str] | None = None) -> Server:
        server = start_server(*args, api_key=api_key, env=env)
        started.append(server)
        return server

    try:
        yield factory  # type: ignore[misc]
    finally:
        for server in started:
            try:
                server.stop()
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
            finally:
                if server.proc.poll() is None:
                    os.killpg(server.proc.pid, signal.SIGKILL)
