"""Who may call what on the HTTP front end (:class:`AccessPolicy`), checked before any route.

Rules, in order (see ``docs/security.md``):

* Host header: with ``trusted_hosts`` (default when the server listens on a loopback address:
  ``localhost``, ``127.0.0.1``, ``::1``) a request whose ``Host`` names another host is refused
  with 400, so a web page cannot reach the server through DNS rebinding. ``*`` allows any.
* Admin routes (``POST /v1/admin/*``, ``POST /debug/*``, every state-changing route) need a
  JSON body (``Content-Type: application/json``, else 415, so a cross-site form or
  ``text/plain`` POST from a browser is refused) and the admin key as ``Authorization: Bearer``
  (else 401); with no admin key configured, they are served only to loopback clients (else
  403), with the API key when one is set.
* ``/v1/*`` needs the API key when one is configured (401); with ``protect_metrics`` so do
  ``/metrics``, ``/debug/*`` and the dashboard's data (``/v1/cluster`` is under ``/v1``).
* ``/health`` is always open (liveness probes).

Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from dopd.serve.errors import ServeError

Headers = list[tuple[bytes, bytes]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_trusted_hosts(bind_host: str) -> tuple[str, ...]:
    """Host names served when none are configured: the loopback names when the server listens
    on loopback, any (``*``) otherwise (the operator names theirs with ``trusted_hosts``)."""
    return LOOPBACK_NAMES if is_loopback(bind_host) else ("*",)


def _host_name(value: str) -> str:
    """``value`` of a Host header without its port (``[::1]:8000`` -> ``::1``)."""
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The access rules of one deployment (see the module docstring)."""

    api_key: str | None = None
    admin_key: str | None = None
    protect_metrics: bool = False
    trusted_hosts: tuple[str, ...] = ("*",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trusted_hosts",
                           tuple(h.lower() for h in self.trusted_hosts))

    def __repr__(self) -> str:  # never print keys
        return (f"AccessPolicy(api_key={'set' if self.api_key else None}, admin_key="
                f"{'set' if self.admin_key else None}, protect_metrics={self.protect_metrics}, "
                f"trusted_hosts={self.trusted_hosts})")

    def check(self, method: str, path: str, headers: Headers,
              client: tuple[str, int] | None) -> ServeError | None:
        """The error to answer a request with, or None to serve it."""
        host = b""
        authorization = b""
        content_type = b""
        for name, value in headers:
            if name == b"host":
                host = value
            elif name == b"authorization":
                authorization = value
            elif name == b"content-type":
                content_type = value
        if "*" not in self.trusted_hosts and \
                _host_name(host.decode("latin-1").lower()) not in self.trusted_hosts:
            return ServeError(400, "invalid Host header (not among the server's trusted hosts)",
                              code="invalid_host")
        if method != "GET" and method != "HEAD" and \
                (path.startswith("/v1/admin/") or path.startswith("/debug/")):
            return self._admin(authorization, content_type, client)
        if path.startswith("/v1/") or (self.protect_metrics and (
                path == "/metrics" or path.startswith("/debug/"))):
            return self._bearer(authorization, self.api_key, "API key", "invalid_api_key")
        return None

    def _admin(self, authorization: bytes, content_type: bytes,
               client: tuple[str, int] | None) -> ServeError | None:
        media = content_type.split(b";", 1)[0].strip().lower()
        if media != b"application/json":
            return ServeError(415, "admin requests need Content-Type: application/json",
                              code="unsupported_media_type")
        if self.admin_key is not None:
            return self._bearer(authorization, self.admin_key, "admin key", "invalid_admin_key")
        if client is None or not is_loopback(client[0]):
            return ServeError(403, "admin requests are served to loopback clients only unless "
                              "an admin key is configured", code="forbidden")
        return self._bearer(authorization, self.api_key, "API key", "invalid_api_key")

    @staticmethod
    def _bearer(authorization: bytes, key: str | None, what: str,
                code: str) -> ServeError | None:
        if key is None:
            return None
        if authorization[:7].lower() == b"bearer " and \
                hmac.compare_digest(authorization[7:].strip(), key.encode()):
            return None
        return ServeError(401, f"incorrect or missing {what}", code=code)
