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

KV sockets can instead run plain with an HMAC on every message (``kv_curve`` False,
``kv_auth = "hmac"``): CURVE encrypts every KV byte, which costs bandwidth; in this mode a fetch
carries an HMAC-SHA256 (the cluster's ``mac_key``) over its request and a fresh nonce, and the
answer an HMAC over its kind, request id, the nonce and the KV header, so only the cluster's
workers get KV and a reply from anyone else (say, a process that took a crashed worker's port)
is dropped and counted. The KV bytes themselves then cross unencrypted and their integrity
rests on the TCP stream (loopback, or a cluster network without on-path attackers).

``None`` keys (``channel_auth = false``) leave the sockets plain, as before, for a trusted
network or a measurement of what CURVE costs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from dataclasses import dataclass, field

import zmq
from zmq.auth.thread import ThreadAuthenticator

from dopd.errors import DopdError


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    """One cluster's CURVE key pair (Z85 bytes) and HMAC key; ``kv_curve`` False: KV sockets
    use the HMAC instead of CURVE. Secrets never show in a repr."""

    public: bytes
    secret: bytes = field(repr=False)
    mac_key: bytes = field(default=b"", repr=False)
    kv_curve: bool = True

    @staticmethod
    def generate(kv_curve: bool = True) -> ClusterKeys:
        """Fresh keys; DopdError when this libzmq was built without CURVE (libsodium)."""
        if not zmq.has("curve"):
            raise DopdError("this libzmq has no CURVE support (libsodium): install a pyzmq "
                            "wheel with it, or set channel_auth = false on a trusted network")
        public, secret = zmq.curve_keypair()
        return ClusterKeys(public, secret, os.urandom(32), kv_curve)

    def sign(self, *parts: bytes) -> bytes:
        """HMAC-SHA256 of ``parts`` (each length-prefixed, so boundaries count)."""
        mac = hmac.new(self.mac_key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(len(part).to_bytes(8, "little"))
            mac.update(part)
        return mac.digest()

    def verify(self, mac: bytes, *parts: bytes) -> bool:
        """Whether ``mac`` is :meth:`sign` of ``parts`` (constant time)."""
        return hmac.compare_digest(mac, self.sign(*parts))


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
