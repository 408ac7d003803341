"""KV hand-off through the Ray object store (``kv_transport = "object_store"``).

The prefill side copies a finished prompt's KV into the object store as soon as the prompt is
done (:func:`put_payload`), frees its own KV blocks at once, and hands the serialized
``ObjectRef`` on in the hand-off (the hand-off's ``ref``, relayed by the front end). The decode
side deserializes it and pulls the object without blocking its loop (``ray.wait`` with
``fetch_local``, then :func:`get_payload`), under the same deadline as a socket fetch: when it
passes, or the object is gone, the prompt is recomputed. The object's lifetime is the lease:
the prefill side holds the only reference until the decode side says it has the KV (a
``fetch`` message on the prefill worker's KV socket, which in this mode means "release") or
until ``kv_lease_s`` passes; dropping it frees the object. A put that fails (store full) falls
back to the socket hand-off for that request.

Implements :class:`dopd.kv.transport.KVTransport` (``ObjectStoreTransport``). Runs inside Ray
actors only (see :mod:`dopd.serve.ray_cluster`); it imports Ray.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayError

from dopd.engine.kv_handoff import KVHandle
from dopd.engine.model import KVPayload
from dopd.errors import DopdError
from dopd.kv.transport import ImportResult
from dopd.serve.channel_auth import ClusterKeys
from dopd.serve.kv_socket import LeasedEngine, Pacer, SocketTransport
from dopd.serve.wire import payload_frames, payload_from_frames


def put_payload(payload: KVPayload) -> tuple[Any, bytes]:
    """Copy ``payload`` into the object store: its ``ObjectRef`` (the object lives while it is
    referenced here) and the ref serialized for another process."""
    header, body = payload_frames(payload)
    ref = ray.put((header, np.frombuffer(body, dtype=np.uint8)))
    blob = ray.cloudpickle.dumps(ref)
    # Serializing a ref out of band pins its object for this process's lifetime; undo the pin
    # so the object is freed when ``ref`` is dropped (the lease end). Without this (private)
    # call in some Ray version, objects would live until the worker ends.
    with contextlib.suppress(AttributeError):
        ray._private.worker.global_worker.core_worker.remove_object_ref_reference(ref)
    return ref, blob


def load_ref(blob: bytes) -> Any:
    """The ``ObjectRef`` serialized by :func:`put_payload`."""
    return ray.cloudpickle.loads(blob)


def get_payload(ref: Any, timeout_s: float = 10.0) -> KVPayload:
    """The payload of a ready object; a read-only view of the object store's memory on this
    node (the import copies it into the KV cache). RayError or DopdError on failure."""
    header, body = ray.get(ref, timeout=timeout_s)
    return payload_from_frames(header, memoryview(body))


class ObjectStoreTransport(SocketTransport):
    """The object-store KV transport (see the module docstring); the socket transport is its
    fallback for a failed put and its channel for releases."""

    name = "object_store"

    def __init__(self, engine: LeasedEngine, timeout_s: float, lease_s: float,
                 host: str = "127.0.0.1", keys: ClusterKeys | None = None,
                 link: Pacer | None = None) -> None:
        super().__init__(engine, timeout_s, host, keys, link)
        self.lease_s = lease_s
        self.kv_objects: dict[int, tuple[Any, float]] = {}  # rid -> (ref, lease end): prefill
        self.kv_pulls: dict[int, tuple[Any, str, str]] = {}  # rid -> (ref, src, source): decode

    # ------------------------------------------------------------------ source side
    def publish(self, handle: KVHandle) -> bytes | None:
        rid = handle.request_id
        try:
            payload = self.engine.fetch_kv(handle)
            ref, blob = put_payload(payload)
        except (RayError, DopdError):
            return super().publish(handle)  # the socket hand-off still works
        self.engine.release_kv(rid)
        self.bytes_sent += payload.nbytes
        self.kv_objects[rid] = (ref, time.monotonic() + self.lease_s)
        return blob

    @property
    def held(self) -> int:
        return len(self.kv_objects)  # a drain waits until the decode side has them

    def serve_fetch(self, ident: bytes, rid: int, source: str) -> None:
        if self.kv_objects.pop(rid, None) is None:  # else: a release, the decode side has it
            super().serve_fetch(ident, rid, source)

    def expire(self) -> None:
        super().expire()
        now = time.monotonic()
        for rid in [r for r, (_, end) in self.kv_objects.items() if now > end]:
            del self.kv_objects[rid]

    def cancel(self, request_id: int) -> None:
        super().cancel(request_id)
        self.kv_pulls.pop(request_id, None)

    # ------------------------------------------------------------------ target side
    def fetch(self, handle: KVHandle, source_addr: str, ref: bytes | None) -> None:
        if ref is None:
            super().fetch(handle, source_addr, ref)
            return
        self._begin(handle.request_id)
        self.kv_pulls[handle.request_id] = (load_ref(ref), source_addr, handle.source)

    def next_due(self) -> float | None:
        # objects being pulled are checked on every turn of the loop, not only on input
        return time.perf_counter() + 0.001 if self.kv_pulls else super().next_due()

    def pump(self, polled: bool = True) -> list[ImportResult]:
        out = super().pump(polled)  # its timeouts first: an object past its deadline is not taken
        for rid in [r for r in self.kv_pulls if r not in self.fetches]:
            del self.kv_pulls[rid]  # timed out or aborted
        if not self.kv_pulls:
            return out
        refs = [ref for ref, _, _ in self.kv_pulls.values()]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=True)[0])
        for rid, (ref, src, source) in list(self.kv_pulls.items()):
            if ref not in ready:
                continue
            del self.kv_pulls[rid]
            try:
                payload, error = get_payload(ref), None
            except (RayError, DopdError) as exc:
                payload, error = None, f"object store: {str(exc).splitlines()[0]}"
            self.client.fetch(src, rid, source)  # release the prefill side's object
            result = self._complete(rid, payload, error)
            if result is not None:
                out.append(result)
        return out
