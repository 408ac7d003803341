"""Every ``dopd`` command in README.md's ```bash blocks runs as written.

README.md is parsed at test time: each ```bash block's lines are joined at trailing backslashes,
comments are stripped, the line is split at ``&&``, ``;``, ``||`` and ``|``, and every segment
that starts with ``dopd`` is one example. They run in README order in one temporary working
directory (so ``dopd data tiny-checkpoint out/tiny`` is there for a later ``--model out/tiny``),
as ``python -m dopd.cli.main ARGS`` with this checkout's ``src`` first on ``PYTHONPATH``, each
under :data:`TIMEOUT_S`.

- ``dopd serve``: started on a free port (``--port`` is set), ready when ``/health`` answers 200
  within :data:`READY_S`; then SIGTERM, and the exit code must be 0.
- ``dopd bench``: runs against a ``dopd serve`` (dopd-tiny, one worker) that the test starts;
  its ``--url`` is pointed at that server.
- :data:`OVERRIDES` shrinks the few examples that would take minutes (each with its reason);
  :data:`SKIPS` lists the examples that need what CI lacks (Ray, a GPU).

Afterwards no new file may appear in the repository checkout, and every file written in the
working directory must lie under ``out/`` (git-ignored), as the README promises.

Slow parts (2-core machine): each ``serve`` example 20-40 s (worker start-up), the ``bench``
example about 30 s with its server, each ``experiment`` 15-30 s, ``simulate --max-goodput`` and
the trace simulations about 10 s each. Marked ``slow``; it still runs in CI.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TIMEOUT_S = 240.0
READY_S = 180.0
STOP_S = 60.0
NOISE = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis",
         "node_modules", ".mypy_cache"}
"""Folders the snapshot of the checkout ignores (caches that tests and imports may write)."""


@dataclass(frozen=True)
class Example:
    """One ``dopd`` command of the README: its line, its text and its arguments after ``dopd``."""

    line: int
    text: str
    argv: tuple[str, ...]


def parse_examples(markdown: str) -> list[Example]:
    """Every ``dopd`` command of the ```bash blocks of ``markdown``, in order."""
    examples: list[Example] = []
    in_bash = False
    pending, start = "", 0
    for number, raw in enumerate(markdown.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_bash = not in_bash and stripped[3:].strip() in ("bash", "sh", "shell", "console")
            pending = ""
            continue
        if not in_bash:
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        examples += _commands(pending + stripped, start)
        pending = ""
    return examples


def _commands(line: str, number: int) -> list[Example]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|"):
            segments.append([])
        else:
            segments[-1].append(token)
    return [Example(number, shlex.join(seg), tuple(seg[1:]))
            for seg in segments if seg and seg[0] == "dopd"]


def set_option(argv: list[str], name: str, value: str) -> list[str]:
    """``argv`` with option ``name`` set to ``value`` (replaced where given, else appended)."""
    if name in argv:
        i = argv.index(name)
        return [*argv[:i + 1], value, *argv[i + 2:]]
    return [*argv, name, value]


def _experiment_small(argv: list[str]) -> list[str]:
    out = ["experiment", "smoke", *argv[2:]]
    out = set_option(out, "--scenarios", "conv-8b")
    return out if "--policies" in out else set_option(out, "--policies", "dopd")


def _generalize_small(argv: list[str]) -> list[str]:
    if "--names" in argv:
        i = argv.index("--names")
        argv = [*argv[:i], *argv[i + 2:]]
    argv = set_option(set_option(argv, "--scenarios", "1"), "--requests", "20")
    return set_option(argv, "--seed", "33")  # its first scenario is a small one (10 s of CPU)


@dataclass(frozen=True)
class Override:
    """A size-limiting change to the examples whose text matches ``pattern``."""

    pattern: str
    reason: str
    apply: Callable[[list[str]], list[str]]


OVERRIDES: tuple[Override, ...] = (
    Override(r"^dopd experiment generalize",
             "24 scenarios take 30 min on 2 cores: one drawn scenario (seed 33: 6 instances) of "
             "20 requests at load 1",
             _generalize_small),
    Override(r"^dopd experiment (?!generalize)",
             "the suites take 40 s (smoke) to 30 min (paper): run as the smoke suite on its "
             "conv-8b scenario, with the example's policies (else dopd) and every other option",
             _experiment_small),
    Override(r"^dopd bench .*--duration", "60 s of trace on a CPU server: 5 s",
             lambda argv: set_option(argv, "--duration", "5")),
    Override(r"^dopd serve .*--instances ([3-9]|\d\d)",
             "more workers than 2 cores start slowly: 2 workers",
             lambda argv: set_option(argv, "--instances", "2")),
    Override(r"^dopd profile ", "the default grid measures for about 30 s: the tiny grid",
             lambda argv: set_option(argv, "--grid", "tiny")),
    Override(r"--out docs/results/", "reproduces a committed report: written under out/ instead",
             lambda argv: set_option(argv, "--out",
                                     "out/" + argv[argv.index("--out") + 1].split("/", 2)[2])),
)

def _no_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return True
    return not torch.cuda.is_available()


SKIPS: tuple[tuple[str, str, Callable[[], bool]], ...] = (
    (r"--backend ray|--ray-address",
     "needs Ray (a local Ray instance takes minutes to start on 2 cores, --ray-address auto a "
     "running cluster); tests/serve_ray covers the Ray backend", lambda: True),
    (r"--device cuda", "needs a CUDA GPU, and none is visible", _no_cuda),
    (r"--engine vllm",
     "needs a real checkpoint folder and the vLLM install (scripts/install_vllm.sh), and the "
     "attach example hosts elsewhere; tests/serve/vllm covers the vLLM fleet", lambda: True),
)
"""(pattern, reason, applies): examples matching ``pattern`` are skipped when ``applies()``."""


def prepared(example: Example) -> tuple[list[str], list[str]]:
    """The arguments to run and the reasons of the overrides applied."""
    argv, reasons = list(example.argv), []
    for override in OVERRIDES:
        if re.search(override.pattern, example.text):
            argv = override.apply(argv)
            reasons.append(override.reason)
    return argv, reasons


def skip_reason(example: Example) -> str | None:
    for pattern, reason, applies in SKIPS:
        if re.search(pattern, example.text) and applies():
            return reason
    return None


EXAMPLES = parse_examples(README.read_text(encoding="utf-8"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def checkout_files() -> set[str]:
    """Every file of the checkout (ignored ones included), caches excluded."""
    files: set[str] = set()
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in NOISE and not d.endswith(".egg-info")]
        files.update(str(Path(root, n).relative_to(REPO)) for n in names)
    return files


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"),
                                                    os.environ.get("PYTHONPATH")) if p)
    return out


def dopd(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "dopd.cli.main", *argv]


def describe(example: Example, argv: list[str], reasons: list[str]) -> str:
    ran = "" if not reasons else f" (ran as `dopd {shlex.join(argv)}`: {'; '.join(reasons)})"
    return f"README.md line {example.line}: `{example.text}`{ran}"


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


class Server:
    """A ``dopd serve`` process: start, wait for ``/health``, SIGTERM."""

    def __init__(self, argv: list[str], cwd: Path, log: Path) -> None:
        self.port = free_port()
        self.argv = set_option(argv, "--port", str(self.port))
        self.log = log
        self.handle = log.open("w")
        self.proc = subprocess.Popen(dopd(self.argv), cwd=cwd, env=env(), stdout=self.handle,
                                     stderr=subprocess.STDOUT)

    def output(self) -> str:
        if not self.handle.closed:
            self.handle.flush()
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> str | None:
        """None when ``/health`` answered 200, else what went wrong."""
        deadline = time.monotonic() + READY_S
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited {self.proc.returncode} before /health answered"
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        return None
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        return f"/health did not answer 200 within {READY_S:g} s"

    def stop(self) -> int | None:
        """SIGTERM; the exit code, or None when it had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        self.handle.close()
        return code


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.fixture(scope="module")
def checkout_before() -> set[str]:
    return checkout_files()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme-logs")


@pytest.fixture
def bench_server(workdir: Path, logs: Path) -> Iterator[Callable[[], Server]]:
    started: list[Server] = []

    def start() -> Server:
        server = Server(["serve", "--instances", "1"], workdir, logs / "bench-server.log")
        started.append(server)
        problem = server.wait_ready()
        if problem:
            server.stop()
            pytest.fail(f"the test's server for dopd bench: {problem}\n{tail(server.output())}")
        return server

    yield start
    for server in started:
        assert server.stop() == 0, f"the test's server did not stop cleanly\n" \
                                   f"{tail(server.output())}"


def test_parser_joins_continuations_strips_comments_and_splits_chains() -> None:
    markdown = "\n".join([
        "text", "```bash", "pip install x && dopd simulate   # the main job",
        "dopd plan --trace azure-code \\", "  --instances 8 --slo-ttft 1   # fixed pool",
        'dopd generate --prompt "Hello world" --json | head -1', "```",
        "```python", "dopd = 1", "```", "```bash", "python3 -m pytest -q", "```",
    ])
    found = parse_examples(markdown)
    assert [(e.line, e.argv) for e in found] == [
        (3, ("simulate",)),
        (4, ("plan", "--trace", "azure-code", "--instances", "8", "--slo-ttft", "1")),
        (6, ("generate", "--prompt", "Hello world", "--json")),
    ]
    assert set_option(["a", "--port", "1"], "--port", "2") == ["a", "--port", "2"]
    assert _experiment_small(["experiment", "paper", "--out", "o"]) == [
        "experiment", "smoke", "--out", "o", "--scenarios", "conv-8b", "--policies", "dopd"]


def test_readme_has_examples_of_every_command() -> None:
    commands = {e.argv[0] for e in EXAMPLES if e.argv}
    assert {"perf", "simulate", "plan", "forecast", "generate", "serve", "bench", "experiment",
            "data"} <= commands


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES,
                         ids=[f"line{e.line}-{'-'.join(e.argv[:1])}" for e in EXAMPLES])
def test_readme_example_runs(example: Example, workdir: Path, logs: Path,
                             checkout_before: set[str],
                             bench_server: Callable[[], Server]) -> None:
    reason = skip_reason(example)
    if reason:
        pytest.skip(f"README.md line {example.line}: {reason}")
    argv, reasons = prepared(example)
    what = describe(example, argv, reasons)
    if not argv:
        pytest.fail(f"{what}: no sub-command")
    if argv[0] == "serve":
        server = Server(argv, workdir, logs / f"serve-{example.line}.log")
        problem = server.wait_ready()
        code = server.stop()
        if problem or code != 0:
            pytest.fail(f"{what}: {problem or f'exit code {code} after SIGTERM'}\n"
                        f"{tail(server.output())}")
        return
    if argv[0] == "bench":
        server = bench_server()
        url = f"http://127.0.0.1:{server.port}"
        argv = set_option(argv, "--url", url)
    try:
        done = subprocess.run(dopd(argv), cwd=workdir, env=env(), capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}: still running after {TIMEOUT_S:g} s")
    if done.returncode != 0:
        pytest.fail(f"{what}: exit code {done.returncode}\n--- stderr ---\n{tail(done.stderr)}"
                    f"\n--- stdout ---\n{tail(done.stdout)}")


@pytest.mark.slow
def test_examples_wrote_only_under_out_and_nothing_in_the_checkout(
    workdir: Path, checkout_before: set[str]
) -> None:
    new = sorted(checkout_files() - checkout_before)
    assert not new, f"README examples left files in the checkout: {new[:20]}"
    stray = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")
                   if p.is_file() and p.relative_to(workdir).parts[0] != "out")
    assert not stray, f"README examples wrote outside out/: {stray[:20]}"
