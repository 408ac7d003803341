"""Joining or starting a Ray cluster, for the ``ray`` backends of ``dopd serve`` and
``dopd experiment``. Importing this module does not import Ray."""

from __future__ import annotations

import logging
import os
import re

from dopd.errors import DopdError, require

_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5})$")


def check_address(address: str) -> str:
    """``address`` when it is ``auto``, ``host:port`` or ``ray://host:port``; DopdError
    otherwise."""
    require(bool(_ADDRESS.match(address)), f"Ray address must be auto, HOST:PORT or "
            f"ray://HOST:PORT, got {address!r}")
    return address


def connect(address: str | None, *, num_cpus: int | None = None,
            insecure: bool = False) -> bool:
    """Connect this process to Ray: to the cluster at ``address`` (its own authentication
    applies), or (None) to a new local Ray instance with ``num_cpus`` CPUs (None: all) and no
    dashboard. A local instance keeps Ray's token authentication on (Ray writes the token to
    ``~/.ray/auth_token``; only this user reads it) unless ``insecure``; an environment that
    turns it off (``RAY_AUTH_MODE=disabled``) without ``insecure`` is refused, as is a Ray
    without token authentication. Returns True when this call connected (the caller
    disconnects with ``ray.shutdown()``), False when this process was connected already.

    DopdError when Ray is not installed or the cluster cannot be reached.
    """
    try:
        import ray
    except ImportError:
        raise DopdError("the ray backend needs Ray: pip install 'dopd[ray]'") from None
    if ray.is_initialized():
        return False
    options = {"log_to_driver": False, "logging_level": logging.WARNING, "namespace": "dopd"}
    try:
        if address is None:
            _local_auth(insecure)
            ray.init(num_cpus=num_cpus, include_dashboard=False, **options)
        else:
            ray.init(address=check_address(address), **options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where = "a local Ray instance" if address is None else f"the Ray cluster at {address}"
        raise DopdError(f"cannot connect to {where}: {str(exc).splitlines()[0]}") from None
    return True


def _local_auth(insecure: bool) -> None:
    """Set ``RAY_AUTH_MODE`` for a local instance: ``token`` (explicitly: Ray 2.52 leaves an
    unset mode off) unless ``insecure``."""
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if insecure:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        return
    require(mode in ("", "token"), f"RAY_AUTH_MODE={mode} turns Ray's token authentication "
            "off: pass --ray-insecure (ray_insecure = true) to mean it")
    try:
        from ray._raylet import AuthenticationMode  # noqa: F401  (Ray >= 2.52)
    except ImportError:
        raise DopdError("this Ray has no token authentication (Ray >= 2.52 has): upgrade it, "
                        "or pass --ray-insecure") from None
    os.environ["RAY_AUTH_MODE"] = "token"
