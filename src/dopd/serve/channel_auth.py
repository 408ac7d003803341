"""Authentication of the ZMQ channels between the front end and the workers (ZMQ CURVE).

The front end draws one CURVE key pair per cluster when it starts (:meth:`ClusterKeys.generate`)
and hands it to every worker inside the worker's spec: through the ``spawn`` pipe for local
processes, as an actor argument for Ray (never argv or the environment). Every socket of the
cluster uses that pair: servers (the front end's control ROUTER, each worker's KV ROUTER) with
``CURVE_SERVER``; clients (the workers' control and KV DEALERs) with the pair as their own key
and the same public key as the server's. A ZAP handler (:class:`ChannelGuard`, one thread per
ZMQ context) admits a client only when its key is the cluster's, so a peer without the secret
key cannot complete a handshake: ZMQ drops its bytes before any message reaches dopd, and
everything that does cross is encrypted and authenticated by libsodium. Refused handshakes are
counted (:attr:`ChannelGuard.denied`); a peer that does not even speak CURVE is dropped by ZMQ
without reaching the handler.

``None`` keys (``channel_auth = false``) leave the sockets plain, as before, for a trusted
network or a measurement of what CURVE costs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import zmq
from zmq.auth.thread import ThreadAuthenticator

from dopd.errors import DopdError


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    """One cluster's CURVE key pair (Z85 bytes); the secret never shows in a repr."""

    public: bytes
    secret: bytes = field(repr=False)

    @staticmethod
    def generate() -> ClusterKeys:
        """A fresh pair; DopdError when this libzmq was built without CURVE (libsodium)."""
        if not zmq.has("curve"):
            raise DopdError("this libzmq has no CURVE support (libsodium): install a pyzmq "
                            "wheel with it, or set channel_auth = false on a trusted network")
        public, secret = zmq.curve_keypair()
        return ClusterKeys(public, secret)


class ChannelGuard:
    """The ZAP handler of one ZMQ context: admits CURVE clients holding ``keys``. Start it
    before binding a CURVE server socket in that context; :meth:`stop` before terminating it."""

    def __init__(self, context: zmq.Context, keys: ClusterKeys) -> None:
        self.keys = keys
        self.denied = 0
        self._lock = threading.Lock()
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP decision for a client's Z85 public ``key`` (runs in the handler's thread)."""
        if key == self.keys.public:
            return True
        with self._lock:
            self.denied += 1
        return False

    def stop(self) -> None:
        self._auth.stop()


_guards: dict[int, ChannelGuard] = {}
_guards_lock = threading.Lock()


def guard_for(context: zmq.Context, keys: ClusterKeys) -> ChannelGuard:
    """The one :class:`ChannelGuard` of ``context`` (started on first use)."""
    with _guards_lock:
        guard = _guards.get(id(context))
        if guard is None or guard.keys != keys:
            if guard is not None:
                guard.stop()
            guard = _guards[id(context)] = ChannelGuard(context, keys)
        return guard


def release_guard(context: zmq.Context) -> None:
    """Stop the guard of ``context``, if any (before ``context.term()``)."""
    with _guards_lock:
        guard = _guards.pop(id(context), None)
    if guard is not None:
        guard.stop()


def secure_server(socket: zmq.Socket, keys: ClusterKeys | None) -> None:
    """Make ``socket`` (before it binds) a CURVE server of the cluster; plain when None."""
    if keys is None:
        return
    guard_for(socket.context, keys)
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True


def secure_client(socket: zmq.Socket, keys: ClusterKeys | None) -> None:
    """Make ``socket`` (before it connects) a CURVE client of the cluster; plain when None."""
    if keys is None:
        return
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_serverkey = keys.public


def denied(context: zmq.Context) -> int:
    """Handshakes refused so far in ``context`` (0 without a guard)."""
    with _guards_lock:
        guard = _guards.get(id(context))
    return 0 if guard is None else guard.denied
