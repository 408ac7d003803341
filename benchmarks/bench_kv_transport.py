"""KV hand-off latency and bandwidth: the ZMQ peer channel (sockets) versus the Ray object store.

Two Ray actors, a sender (the prefill side) and a receiver (the decode side), exchange the KV
of one request, laid out as Llama-3-8B's (32 layers, K and V, 8 KV heads of 128, bfloat16:
128 KiB per token), at 1, 4, 16, 64 and 256 MiB. One hand-off is timed on the receiver, from
asking the sender for KV that it already holds to holding the bytes in its own buffer (copied
in, as a KV import copies into the paged cache):

* ``socket``: a fetch on the project's KV channel (``KVClient`` -> ``KVServer``), the reply's
  data frame received without copies, then the copy; plain sockets (``channel_auth = false``);
* ``socket_curve``: the same over ZMQ CURVE (authenticated and encrypted, as ``dopd serve``
  runs it by default: :mod:`dopd.serve.channel_auth`);
* ``socket_hmac``: the same with an HMAC on every message (``--kv-auth hmac``: authenticated,
  not encrypted, still zero-copy);
* ``object_store``: the sender copies the KV into the object store and answers with the
  serialized ``ObjectRef`` (``dopd.serve.ray_kv.put_payload``, as a prefill worker does); the
  receiver pulls it (``ray.wait`` with ``fetch_local``, ``get_payload``), then copies.

Each (size, transport) pair runs ``--repeats`` times after one warm-up, the transports
interleaved; median and P90 latency and the bandwidth at the median are printed side by side.
On one machine (the default: a local Ray instance with 2 CPUs) the object store is shared
memory and the socket is loopback TCP; on a cluster, ``--ray-address ADDR --spread`` puts the
two actors on different nodes.

    python3 benchmarks/bench_kv_transport.py                      # 1..256 MiB, 20 repeats
    python3 benchmarks/bench_kv_transport.py --repeats 20 --json kv_transport.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch
import zmq

from dopd.engine.model import KVPayload
from dopd.serve.channel_auth import ClusterKeys
from dopd.serve.channels import KVClient, KVServer
from dopd.serve.wire import pack, unpack

LAYERS, HEADS, HEAD_DIM = 32, 8, 128  # Llama-3-8B: 128 KiB of bfloat16 K and V per token
BYTES_PER_TOKEN = LAYERS * 2 * HEADS * HEAD_DIM * 2
MiB = 1 << 20
TRANSPORTS = ("socket", "socket_curve", "socket_hmac", "object_store")
SOCKETS = TRANSPORTS[:3]
TIMEOUT_MS = 120_000


def make_payload(nbytes: int) -> KVPayload:
    tokens = max(1, nbytes // BYTES_PER_TOKEN)
    gen = torch.Generator().manual_seed(tokens)
    data = torch.randn((LAYERS, 2, tokens, HEADS, HEAD_DIM), generator=gen)
    return KVPayload(data.to(torch.bfloat16))


class Sender:
    """The prefill side: holds one payload and serves it over both transports until quit."""

    def __init__(self, keys: ClusterKeys, hmac_keys: ClusterKeys) -> None:
        import ray

        torch.set_num_threads(1)
        host = ray.util.get_node_ip_address()
        self.kv = {"socket": KVServer(host), "socket_curve": KVServer(host, keys),
                   "socket_hmac": KVServer(host, hmac_keys)}
        self.control = zmq.Context.instance().socket(zmq.REP)
        self.control.setsockopt(zmq.LINGER, 0)
        port = self.control.bind_to_random_port(f"tcp://{host}")
        self.control_address = f"tcp://{host}:{port}"
        self.held: Any = None  # the ObjectRef of the last object put

    def addresses(self) -> tuple[dict[str, str], str]:
        return {t: kv.address for t, kv in self.kv.items()}, self.control_address

    def serve(self) -> int:
        """Answer KV fetches and control requests (prepare, put, quit); returns the requests
        served."""
        from dopd.serve.ray_kv import put_payload

        payload: KVPayload | None = None
        served = 0
        poller = zmq.Poller()
        for kv in self.kv.values():
            poller.register(kv.socket, zmq.POLLIN)
        poller.register(self.control, zmq.POLLIN)
        while True:
            if not poller.poll(TIMEOUT_MS):
                return served  # the driver is gone
            for kv in self.kv.values():
                for ident, rid, _ in kv.receive_all():
                    assert payload is not None
                    kv.reply(ident, rid, payload)
                    served += 1
            try:
                msg = unpack(self.control.recv(zmq.NOBLOCK))
            except zmq.Again:
                continue
            if msg["op"] == "prepare":
                payload, self.held = make_payload(int(msg["nbytes"])), None
                self.control.send(pack({"nbytes": payload.nbytes}))
            elif msg["op"] == "put":
                assert payload is not None
                self.held, blob = put_payload(payload)  # freed by the next put
                self.control.send(blob)
                served += 1
            else:
                self.control.send(b"bye")
                return served


class Receiver:
    """The decode side: times hand-offs from the sender."""

    def __init__(self, kv_addresses: dict[str, str], control_address: str,
                 keys: ClusterKeys, hmac_keys: ClusterKeys) -> None:
        torch.set_num_threads(1)
        self.kv_addresses = kv_addresses
        self.clients = {"socket": KVClient(), "socket_curve": KVClient(keys),
                        "socket_hmac": KVClient(hmac_keys)}
        self.control = zmq.Context.instance().socket(zmq.REQ)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.connect(control_address)
        self.dest = torch.empty(0, dtype=torch.uint8)
        self.rid = 0

    def request(self, msg: dict[str, Any]) -> bytes:
        self.control.send(pack(msg))
        if not self.control.poll(TIMEOUT_MS):
            raise TimeoutError("the sender does not answer")
        return self.control.recv()  # type: ignore[no-any-return]

    def prepare(self, nbytes: int) -> int:
        size = int(unpack(self.request({"op": "prepare", "nbytes": nbytes}))["nbytes"])
        self.dest = torch.empty(size, dtype=torch.uint8)
        return size

    def handoff(self, transport: str) -> float:
        """Seconds for one hand-off over ``transport``."""
        from dopd.serve.ray_kv import get_payload, load_ref

        start = time.perf_counter()
        if transport in SOCKETS:
            self.rid += 1
            client, address = self.clients[transport], self.kv_addresses[transport]
            client.fetch(address, self.rid, "bench")
            replies: list[Any] = []
            while not replies:
                if not client.sockets()[0].poll(TIMEOUT_MS):
                    raise TimeoutError("no KV reply")
                replies = client.receive_all()
            payload = replies[0][1]
            assert payload is not None, replies[0][2]
            self.dest.copy_(payload.data.reshape(-1).view(torch.uint8))
        else:
            import ray

            ref = load_ref(self.request({"op": "put"}))
            ready, _ = ray.wait([ref], timeout=TIMEOUT_MS / 1000, fetch_local=True)
            assert ready, "object not ready"
            payload = get_payload(ref)
            self.dest.copy_(payload.data.reshape(-1).view(torch.uint8))
        elapsed = time.perf_counter() - start
        del payload
        return elapsed

    def run(self, nbytes: int, repeats: int) -> dict[str, list[float]]:
        """Warm-up, then ``repeats`` hand-offs per transport, interleaved."""
        self.prepare(nbytes)
        for transport in TRANSPORTS:
            self.handoff(transport)
        times: dict[str, list[float]] = {t: [] for t in TRANSPORTS}
        for i in range(repeats):
            order = TRANSPORTS[i % 4:] + TRANSPORTS[:i % 4]
            for transport in order:
                times[transport].append(self.handoff(transport))
        return times

    def quit(self) -> None:
        self.request({"op": "quit"})


def summarize(nbytes: int, times: list[float]) -> dict[str, float]:
    p50, p90 = np.percentile(times, [50, 90])
    return {"p50_ms": 1e3 * float(p50), "p90_ms": 1e3 * float(p90),
            "gb_per_s": nbytes / float(p50) / 1e9}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,4,16,64,256", help="MiB, comma-separated")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--ray-address", default=None,
                    help="join this Ray cluster (default: a local instance with 2 CPUs)")
    ap.add_argument("--spread", action="store_true",
                    help="place the two actors on different nodes (SPREAD)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the figures here")
    args = ap.parse_args(argv)
    sizes = [int(float(s) * MiB) for s in args.sizes.split(",")]
    if args.repeats < 1 or min(sizes) < BYTES_PER_TOKEN:
        ap.error("--repeats must be >= 1 and every size at least 128 KiB")

    import ray

    from dopd.serve.ray_connect import connect

    started = time.perf_counter()
    owns = connect(args.ray_address, num_cpus=2)
    keys, hmac_keys = ClusterKeys.generate(), ClusterKeys.generate(kv_curve=False)
    options: dict[str, Any] = {"num_cpus": 0.5}
    if args.spread:
        options["scheduling_strategy"] = "SPREAD"
    sender = ray.remote(Sender).options(**options).remote(keys, hmac_keys)
    kv_addresses, control_address = ray.get(sender.addresses.remote())
    serving = sender.serve.remote()
    receiver = ray.remote(Receiver).options(**options).remote(kv_addresses, control_address,
                                                              keys, hmac_keys)
    rows = []
    for nbytes in sizes:
        times = ray.get(receiver.run.remote(nbytes, args.repeats))
        size = (nbytes // BYTES_PER_TOKEN) * BYTES_PER_TOKEN
        rows.append({"mib": size / MiB, "tokens": size // BYTES_PER_TOKEN,
                     **{t: summarize(size, times[t]) for t in TRANSPORTS},
                     "raw_s": times})
    ray.get(receiver.quit.remote())
    ray.get(serving)
    nodes = len({n["NodeID"] for n in ray.nodes() if n["Alive"]})
    if owns:
        ray.shutdown()

    print(f"KV hand-off, Llama-3-8B layout (128 KiB/token, bf16), {args.repeats} repeats, "
          f"{nodes} Ray node(s){', actors spread' if args.spread else ''}")
    names = {"socket": "socket", "socket_curve": "CURVE", "socket_hmac": "HMAC",
             "object_store": "obj.store"}
    print(f"{'MiB':>5} {'tokens':>6} | " + " | ".join(
        f"{names[t] + ' p50':>13} {'p90':>8} {'GB/s':>5}" for t in TRANSPORTS)
        + " | p50 / socket: " + " ".join(names[t] for t in TRANSPORTS[1:]))
    for r in rows:
        cells = " | ".join(f"{r[t]['p50_ms']:>11.2f}ms {r[t]['p90_ms']:>6.2f}ms "
                           f"{r[t]['gb_per_s']:>5.2f}" for t in TRANSPORTS)
        ratios = " ".join(f"{r[t]['p50_ms'] / r['socket']['p50_ms']:.2f}x"
                          for t in TRANSPORTS[1:])
        print(f"{r['mib']:>5.0f} {r['tokens']:>6} | {cells} | {ratios}")
    print(f"(latency: receiver asks -> receiver holds the bytes in its buffer; GB/s = bytes / "
          f"median latency; {time.perf_counter() - started:.0f} s)")
    print("command: python3 " + " ".join([os.path.relpath(__file__), *(argv or sys.argv[1:])]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"repeats": args.repeats, "nodes": nodes, "spread": args.spread,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
