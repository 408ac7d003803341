"""``dopd serve``'s checks before any worker: listener, worker bound, start-up progress."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from dopd.errors import DopdError
from dopd.serve.preflight import (
    WORKER_RUNTIME_BYTES,
    WORKERS_PER_CORE,
    bind_listener,
    max_local_workers,
    worker_memory_bytes,
)
from dopd.serve.serve_config import ServeConfig


def test_bind_listener_rejects_a_busy_port_and_a_bad_host() -> None:
    taken = bind_listener("127.0.0.1", 0)
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(DopdError, match="already in use"):
            bind_listener("127.0.0.1", port)
    finally:
        taken.close()
    with pytest.raises(DopdError, match="not a valid address"):
        bind_listener("999.1.1.1", 0)


def test_worker_bound_is_the_tighter_of_cores_and_memory() -> None:
    cfg = ServeConfig()
    most, reason = max_local_workers(cfg, cores=2, memory=None)
    assert most == 2 * WORKERS_PER_CORE and "per core" in reason
    each = worker_memory_bytes(cfg)
    assert each > WORKER_RUNTIME_BYTES
    most, reason = max_local_workers(cfg, cores=64, memory=5 * each)
    assert most == 4 and "MiB" in reason
    emulated = dataclasses.replace(cfg, mode="emulated")
    assert worker_memory_bytes(emulated) < each


def test_serve_prints_worker_progress_before_listening_and_stops_cleanly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dopd.cli.main", "serve", "--mode", "emulated", "--instances",
         "1", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if "listening on" in line:
                break
        assert any("starting 1 emulated worker" in x for x in lines), lines
        ready = [i for i, x in enumerate(lines) if "ready (1/1)" in x]
        listening = [i for i, x in enumerate(lines) if "listening on" in x]
        assert ready and listening and ready[0] < listening[0], lines
        assert f":{port}" in lines[listening[0]]
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest
