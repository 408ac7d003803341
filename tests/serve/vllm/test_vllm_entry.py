"""The launcher's NIXL patch, in the vLLM environment's own Python with the real NIXL: an agent
built as vLLM builds it leaves the CPU idle (NIXL's default progress thread spins a core)."""

from __future__ import annotations

import subprocess

from vllm_helpers import VLLM_PYTHON

from dopd.serve.vllm.launch import ENTRY

_IDLE_AGENT = """
import os, runpy, time
entry = runpy.run_path({entry!r})  # as a spawned vLLM process imports it
assert entry["calm_nixl_progress"](), "the patch did not apply"
import nixl._api as api
agent = api.nixl_agent("probe", api.nixl_agent_config(num_threads=4, capture_telemetry=True))
before = os.times()
time.sleep(2.0)
after = os.times()
print("cpu_s", (after.user - before.user) + (after.system - before.system))
"""


def test_an_idle_nixl_agent_leaves_the_cpu_idle() -> None:
    assert VLLM_PYTHON is not None
    r = subprocess.run([VLLM_PYTHON, "-c", _IDLE_AGENT.format(entry=str(ENTRY))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    cpu_s = float(next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("cpu_s")))
    assert cpu_s < 0.5, f"an idle NIXL agent used {cpu_s:.2f} s of CPU in 2 s"
