"""The Ray backend's security: a local Ray instance started by ``dopd serve`` keeps Ray's token
authentication on, turning it off takes ``--ray-insecure``, and with ``--host 127.0.0.1``
dopd's own control and KV sockets bind loopback (Ray's own services bind as Ray decides, behind
its token)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from local_checks import conftest as serve_conftest

pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def loopback_listeners(pid: int) -> int:
    """Listening TCP sockets of ``pid`` bound to 127.0.0.1."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if (p := line.split())[3] == "0A" and p[9] in inodes
               and p[1].startswith("0100007F:"))


def test_a_local_ray_instance_keeps_token_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    server = serve_conftest.start_server(
        "--backend", "ray", "--mode", "emulated", "--step-time-scale", "0", "--instances", "2",
        "--policy", "static:1:1", "--host", "127.0.0.1")
    try:
        r = httpx.post(server.url + "/v1/completions", timeout=60,
                       json={"model": "dopd-tiny", "prompt": "hello", "max_tokens": 4})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        cluster = httpx.get(server.url + "/v1/cluster", timeout=30).json()
        assert sum(i["stats"]["kv_imports"] for i in cluster["instances"]) >= 1
        gcs = [pid for pid in children(server.proc.pid)
               if b"gcs_server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert gcs, "the local Ray instance's GCS is a child of the front end"
        environ = Path(f"/proc/{gcs[0]}/environ").read_bytes().split(b"\0")
        assert b"RAY_AUTH_MODE=token" in environ
        # dopd's control socket (front end) and KV sockets (actors) bind loopback
        assert loopback_listeners(server.proc.pid) >= 2  # HTTP and control
        for inst in cluster["instances"]:
            assert loopback_listeners(inst["pid"]) >= 1
    finally:
        server.stop()


def test_turning_ray_auth_off_takes_ray_insecure() -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "dopd.cli.main", "serve", "--backend", "ray",
                           "--port", "0", "--mode", "emulated"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "--ray-insecure" in err and "Traceback" not in err
