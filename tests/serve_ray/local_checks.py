"""The local backend's serving tests (``tests/serve``), loaded as modules so that the Ray
backend's tests reuse their fixtures, helpers and checks as they are."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SERVE_TESTS = Path(__file__).resolve().parents[1] / "serve"


def load(name: str) -> ModuleType:
    """``tests/serve/<name>.py`` as the module ``serve_<name>`` (loaded once)."""
    key = f"serve_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, SERVE_TESTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


conftest = load("conftest")
e2e_disagg = load("test_e2e_disagg")
role_switch = load("test_role_switch")
crash_and_policy = load("test_crash_and_policy")
local_elastic = load("test_local_elastic")
