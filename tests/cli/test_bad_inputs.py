"""Every command fails early and clearly on bad input: exit code 2, ONE line on stderr, no
traceback, before any work (nothing written, well under the time the work takes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

LIMIT_S = 20.0  # a start-up plus argument checks; the runs they guard take 30 s to minutes


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def run_dopd(*args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, whatever the machine has
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "dopd.cli.main", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=env)
    return proc, time.monotonic() - started


def assert_one_line_error(proc: subprocess.CompletedProcess[str], elapsed: float,
                          contains: str) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert lines[0].startswith("dopd")
    assert contains in lines[0], lines[0]
    assert elapsed < LIMIT_S, f"took {elapsed:.1f} s"


BAD_INPUTS: list[tuple[tuple[str, ...], str]] = [
    # outputs
    (("simulate", "--out", "/proc/x"), "--out /proc/x"),
    (("simulate", "--out", "{file}"), "is not a directory"),
    (("simulate", "--json", "{tmp}/no-such-dir/x.json"), "does not exist"),
    (("simulate", "--json", "{tmp}"), "is a folder"),
    (("bench", "--out", "/proc/x"), "--out /proc/x"),
    (("bench", "--json", "{tmp}/no-such-dir/x.json"), "does not exist"),
    (("experiment", "smoke", "--out", "/proc/x"), "--out /proc/x"),
    (("experiment", "smoke", "--out", "{file}"), "not a directory"),
    (("plan", "--json", "{tmp}/no-such-dir/x.json"), "does not exist"),
    (("perf", "--decode", "8", "--json", "{tmp}/no-such-dir/x.json"), "does not exist"),
    (("generate", "--prompt", "x", "--json", "{tmp}/no-such-dir/x.json"), "does not exist"),
    (("forecast", "--trace", "{file}", "--json", "{tmp}/no-such-dir/x.json"), "does not exist"),
    # counts
    (("simulate", "--instances", "100000"), "limit of 1024"),
    (("simulate", "--instances", "0"), "instances"),
    (("simulate", "--instances", "500"), "static:best simulates each"),
    (("simulate", "--instances", "2000", "--policy", "colocated"), "limit of 1024"),
    (("plan", "--instances", "100000"), "limit of 1024"),
    (("plan", "--instances", "1"), "--instances must be >= 2"),
    (("plan", "--max-instances", "99999"), "limit of 1024"),
    (("serve", "--instances", "100000"), "over this machine's limit"),
    (("serve", "--instances", "0"), "instances must be >= 1"),
    (("serve", "--threads", "0"), "threads must be >= 1"),
    (("generate", "--prompt", "x", "--threads", "0"), "--threads must be >= 1"),
    (("generate", "--prompt", "x", "--max-tokens", "0"), "max_tokens must be"),
    # devices, hosts, ports
    (("serve", "--device", "cuda"), "torch sees no GPU"),
    (("serve", "--device", "tpu"), "device must be"),
    (("serve", "--host", "999.1.1.1"), "--host 999.1.1.1"),
    (("serve", "--port", "{busy_port}"), "already in use"),
    (("serve", "--port", "70000"), "port must be in"),
    (("generate", "--prompt", "x", "--device", "cuda"), "torch sees no GPU"),
    (("generate", "--prompt", "x", "--device", "tpu"), "cpu, cuda or cuda:N"),
    # values and usage
    (("serve", "--bogus"), "unrecognized arguments: --bogus"),
    (("serve", "--port", "abc"), "invalid int value"),
    (("simulate", "--rate", "x"), "invalid float value"),
    (("perf", "--prefill", "9000"), "context window of 8192"),
    (("perf", "--decode", "4x100000"), "context window"),
    (("perf", "--kv-mem-util", "1.5", "--decode", "8"), "--kv-mem-util must be in"),
    (("perf", "--mem-util", "0", "--decode", "8"), "--kv-mem-util must be in"),
    (("bench", "--timeout", "0"), "--timeout must be > 0"),
    (("experiment", "nosuchsuite"), "invalid choice"),
]


@pytest.mark.parametrize(("args", "contains"), BAD_INPUTS,
                         ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], contains: str, tmp_path: Path,
                                          busy_port: int) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x\n")
    work = tmp_path / "cwd"
    work.mkdir()
    subs = {"{file}": str(a_file), "{tmp}": str(tmp_path), "{busy_port}": str(busy_port)}
    argv = list(args)
    for key, value in subs.items():
        argv = [a.replace(key, value) for a in argv]
    proc, elapsed = run_dopd(*argv, cwd=work)
    assert_one_line_error(proc, elapsed, contains)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "cwd"]  # nothing written
    assert list(work.iterdir()) == []
