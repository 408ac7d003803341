"""Security of a running ``dopd serve`` (real processes): keys from a file and the environment,
admin routes behind the admin key and JSON, ``/metrics`` protected on request, a Host check,
and worker sockets that an unauthenticated local client can neither drive nor read."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import zmq

from dopd.serve.wire import pack

API_KEY = "api-7c1d"
ADMIN_KEY = "admin-52e9"
ATTACK_WAIT_S = 1.0


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process ``pid`` listens on (Linux /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", link)
        if m:
            inodes.add(m.group(1))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as fh:
            for line in fh.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and parts[9] in inodes:  # LISTEN
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def addresses_of(pid: int) -> set[str]:
    """Local addresses of the TCP sockets ``pid`` listens on, as hex from /proc/net/tcp."""
    out = set()
    ports = listening_ports(pid)
    with open("/proc/net/tcp", encoding="ascii") as fh:
        for line in fh.readlines()[1:]:
            parts = line.split()
            addr, port = parts[1].split(":")
            if parts[3] == "0A" and int(port, 16) in ports:
                out.add(addr)
    return out


Server = Any  # tests/serve/conftest.py's Server


@pytest.fixture(scope="module")
def guarded(server_factory, tmp_path_factory: pytest.TempPathFactory) -> Server:  # type: ignore[no-untyped-def]
    """One emulated worker; the API key from a file, the admin key from the environment,
    /metrics protected."""
    key_file = tmp_path_factory.mktemp("keys") / "api_key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    return server_factory("--mode", "emulated", "--instances", "1", "--api-key-file",
                          str(key_file), "--protect-metrics", env={"DOPD_ADMIN_KEY": ADMIN_KEY})


def call(server: Server, method: str, path: str, key: str | None = None,
         **kw: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(kw.pop("headers", {}))  # type: ignore[arg-type]
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kw)


def test_api_key_from_a_file_and_metrics_protected(guarded: Server) -> None:
    assert call(guarded, "GET", "/v1/models").status_code == 401
    assert call(guarded, "GET", "/v1/models", API_KEY).status_code == 200
    r = call(guarded, "POST", "/v1/completions", API_KEY,
             json={"model": "dopd-tiny", "prompt": "hi", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    for path in ("/metrics", "/debug/frontend"):
        assert call(guarded, "GET", path).status_code == 401
        assert call(guarded, "GET", path, ADMIN_KEY).status_code == 401
        assert call(guarded, "GET", path, API_KEY).status_code == 200
    assert call(guarded, "GET", "/health").status_code == 200
    assert API_KEY.encode() not in Path(f"/proc/{guarded.proc.pid}/cmdline").read_bytes()


def test_admin_routes_need_the_admin_key_and_json(guarded: Server) -> None:
    body = '{"instance": 0, "role": "prefill"}'
    text = call(guarded, "POST", "/v1/admin/switch", ADMIN_KEY, content=body,
                headers={"Content-Type": "text/plain"})
    assert text.status_code == 415 and text.json()["error"]["code"] == "unsupported_media_type"
    form = call(guarded, "POST", "/debug/frontend/reset", ADMIN_KEY, content="a=1",
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    for key in (None, API_KEY, "wrong"):
        r = call(guarded, "POST", "/v1/admin/switch", key, json={"instance": 0,
                                                                "role": "prefill"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_key"
    assert call(guarded, "POST", "/debug/frontend/reset", ADMIN_KEY, json={}).json() == \
        {"reset": True}
    # the refused calls changed nothing: the only instance still serves, mixed
    cluster = call(guarded, "GET", "/v1/cluster", API_KEY).json()
    assert [i["role"] for i in cluster["instances"]] == ["mixed"]


def test_a_foreign_host_header_is_refused(guarded: Server) -> None:
    r = call(guarded, "GET", "/health", headers={"Host": "rebound.attacker.example:8000"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
    assert call(guarded, "GET", "/health", headers={"Host": "localhost"}).status_code == 200


@pytest.fixture(scope="module", params=["curve", "hmac"])
def disagg(server_factory, request) -> Server:  # type: ignore[no-untyped-def]
    """A real prefill and decode worker (KV crosses the peer channel, greedy outputs are
    deterministic), KV sockets under CURVE or HMAC; the API key from the environment, no
    admin key."""
    server = server_factory("--instances", "2", "--policy", "static:1:1", "--kv-auth",
                            request.param, api_key=API_KEY)
    server.kv_auth = request.param
    return server


def complete(server: Server, prompt: str) -> str:
    r = call(server, "POST", "/v1/completions", API_KEY,
             json={"model": "dopd-tiny", "prompt": prompt, "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


def test_unauthenticated_local_clients_cannot_drive_or_read_workers(disagg: Server) -> None:
    before = [complete(disagg, f"prompt {i}") for i in range(4)]
    cluster = call(disagg, "GET", "/v1/cluster", API_KEY).json()
    workers = {i["id"]: i["pid"] for i in cluster["instances"]}
    assert len(workers) == 2 and all(workers.values())
    front_ports = listening_ports(disagg.proc.pid) - {disagg.port}
    worker_ports = set().union(*(listening_ports(pid) for pid in workers.values()))
    assert front_ports and len(worker_ports) >= 2
    for pid in (disagg.proc.pid, *workers.values()):  # local workers bind loopback only
        assert addresses_of(pid) <= {"0100007F"}

    ctx = zmq.Context()
    try:
        socks = []
        for port in front_ports | worker_ports:
            for junk in (b"\xff" * 30, b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f" + b"\0" * 20):
                with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                    raw.sendall(junk)
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.IDENTITY, b"w0")  # a worker's identity, no key
            dealer.connect(f"tcp://127.0.0.1:{port}")
            socks.append(dealer)
            for rid in range(64):  # ask for any request's KV
                dealer.send_multipart([b"fetch", pack({"rid": rid, "source": "worker-0"})])
            dealer.send(pack({"op": "stop"}))
            dealer.send(pack({"ev": "out", "items": [[0, [1], "forged", 1, 1, True, "stop",
                                                      None]]}))
        time.sleep(ATTACK_WAIT_S)
        for dealer in socks:
            assert dealer.poll(0) == 0  # nothing read back: no KV, no prompts
    finally:
        ctx.destroy(linger=0)

    after = [complete(disagg, f"prompt {i}") for i in range(4)]
    assert after == before and "forged" not in "".join(after)
    cluster = call(disagg, "GET", "/v1/cluster", API_KEY).json()
    assert {i["id"]: i["pid"] for i in cluster["instances"]} == workers
    assert all(i["restarts"] == 0 and i["state"] == "active" for i in cluster["instances"])
    assert sum(i["stats"]["kv_imports"] for i in cluster["instances"]) >= 8
    if disagg.kv_auth == "hmac":  # unsigned fetches reached the KV sockets: dropped, counted
        assert sum(i["stats"]["auth_denied"] for i in cluster["instances"]) >= 64


def test_admin_from_loopback_needs_json_and_the_api_key(disagg: Server) -> None:
    r = call(disagg, "POST", "/v1/admin/switch", API_KEY,
             content='{"instance": 0, "role": "decode"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = call(disagg, "POST", "/v1/admin/switch", None, json={"instance": 0, "role": "decode"})
    assert r.status_code == 401
    r = call(disagg, "POST", "/v1/admin/switch", API_KEY, json={"instance": 9, "role": "decode"})
    assert r.status_code == 404  # through to the route


@pytest.mark.slow
def test_channel_auth_off_still_serves(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--mode", "emulated", "--step-time-scale", "0", "--instances", "2",
                            "--policy", "static:1:1", "--no-channel-auth")
    r = httpx.post(server.url + "/v1/completions", timeout=30,
                   json={"model": "dopd-tiny", "prompt": "hi", "max_tokens": 4})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
