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
    dashboard. A local instance must run with Ray's token authentication (Ray writes the token
    to ``~/.ray/auth_token``, in this user's home) unless ``insecure``: an environment that
    turns it off (``RAY_AUTH_MODE=disabled``) is refused, and so is an instance that started
    without it. Returns True when this call connected (the caller
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
            if not insecure:
                _check_token_auth()
        else:
            ray.init(address=check_address(address), **options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where = "a local Ray instance" if address is None else f"the Ray cluster at {address}"
        raise DopdError(f"cannot connect to {where}: {str(exc).splitlines()[0]}") from None
    return True


def _local_auth(insecure: bool) -> None:
    """Check ``RAY_AUTH_MODE`` before starting a local instance (``disabled`` is set, and
    allowed, only with ``insecure``)."""
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if insecure:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        return
    require(mode in ("", "token"), f"RAY_AUTH_MODE={mode} turns Ray's token authentication "
            "off: pass --ray-insecure (ray_insecure = true) to mean it")


def _check_token_auth() -> None:
    """DopdError (after disconnecting) unless the local instance just started enforces
    Ray's token authentication. Ray reads ``RAY_AUTH_MODE`` when it is imported, so it cannot
    be turned on from here; Ray 2.60 turns it on by default, Ray 2.52 only when the mode is
    ``token`` in the environment."""
    import ray

    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode
    except ImportError:
        on = False  # a Ray without token authentication (before 2.52)
    else:
        on = get_authentication_mode() == AuthenticationMode.TOKEN
    if not on:
        ray.shutdown()
        raise DopdError("the local Ray instance started without token authentication: set "
                        "RAY_AUTH_MODE=token (Ray >= 2.52) before starting, or pass "
                        "--ray-insecure")
