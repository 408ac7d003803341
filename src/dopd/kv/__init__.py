"""KV hand-off between engines: one transport interface and its implementations.

* :mod:`dopd.kv.transport`: :class:`KVTransport` (the contract: publish at prefill end, fetch
  with a deadline, release or lease expiry, the recompute fallback on timeout or loss) and
  :class:`ImportResult`.
* :mod:`dopd.kv.in_process`: engines of one process (tests, benchmarks).
* :mod:`dopd.kv.modeled_link`: the modeled link (latency + shared bandwidth) that times
  transfers in the simulator and paces them in emulated serving.
* The socket (ZMQ, CURVE or HMAC) and Ray object-store transports need the server's channels
  and live in ``dopd.serve.kv_socket`` and ``dopd.serve.ray_kv``, behind the same interface.

The handle itself (:class:`~dopd.engine.kv_handoff.KVHandle`), the source's lease table and
the target's pending imports with their recompute fallback are the engine's state, in
:mod:`dopd.engine.kv_handoff` (``kv`` sits above ``engine``); they are re-exported here.
"""

from dopd.engine.kv_handoff import KVHandle, LeaseTable, PendingImport, PendingImports
from dopd.kv.in_process import InProcessTransport, KVBus, transfer_in_process
from dopd.kv.transport import ImportResult, KVEngine, KVTransport

__all__ = ["ImportResult", "InProcessTransport", "KVBus", "KVEngine", "KVHandle",
           "KVTransport", "LeaseTable", "PendingImport", "PendingImports",
           "transfer_in_process"]
