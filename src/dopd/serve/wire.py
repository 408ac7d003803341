"""Encoding of the messages between the front end and the workers, and of KV frames.

Control messages are msgpack maps. A :class:`~dopd.engine.kv_handoff.KVHandle` crosses as a map
(:func:`handle_to_wire` / :func:`handle_from_wire`); a KV payload crosses as a small header and
one raw frame that is sent and received without copies (:func:`payload_frames` /
:func:`payload_from_frames`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import msgpack
import torch

from dopd.engine.kv_handoff import KVHandle
from dopd.engine.model import KVPayload, SamplingParams
from dopd.errors import DopdError, require

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_NAMES = {v: k for k, v in _DTYPES.items()}


def pack(obj: Any) -> bytes:
    """msgpack bytes of a plain-data object."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    """Inverse of :func:`pack`; DopdError on malformed input."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise DopdError(f"malformed message: {exc}") from None


def params_to_wire(params: SamplingParams) -> dict[str, Any]:
    d = dataclasses.asdict(params)
    d["stop_token_ids"] = list(params.stop_token_ids)
    d["stop"] = list(params.stop)
    return d


def params_from_wire(d: dict[str, Any]) -> SamplingParams:
    return SamplingParams(**{**d, "stop_token_ids": tuple(d["stop_token_ids"]),
                             "stop": tuple(d["stop"])})


def handle_to_wire(h: KVHandle) -> dict[str, Any]:
    """A handle as a map (the payload is never inlined: it moves over the KV channel)."""
    return {"request_id": h.request_id, "source": h.source, "prompt_ids": list(h.prompt_ids),
            "first_token": h.first_token, "num_tokens": h.num_tokens,
            "block_ids": list(h.block_ids), "block_size": h.block_size,
            "lease_deadline": h.lease_deadline, "params": params_to_wire(h.params),
            "seed": h.seed, "max_tokens": h.max_tokens}


def handle_from_wire(d: dict[str, Any]) -> KVHandle:
    return KVHandle(d["request_id"], d["source"], tuple(d["prompt_ids"]), d["first_token"],
                    d["num_tokens"], tuple(d["block_ids"]), d["block_size"],
                    d["lease_deadline"], params_from_wire(d["params"]), d["seed"],
                    d["max_tokens"])


def payload_frames(payload: KVPayload) -> tuple[bytes, memoryview]:
    """A header frame and a frame viewing the payload's memory (keep ``payload`` alive until
    the frame is sent; pyzmq does so when sending with ``copy=False``)."""
    data = payload.data.detach().to("cpu").contiguous()
    header = pack({"dtype": _NAMES[data.dtype], "shape": list(data.shape)})
    return header, memoryview(data.view(torch.uint8).numpy()).cast("B")


def payload_from_frames(header: bytes | memoryview, body: memoryview) -> KVPayload:
    """The payload viewing ``body`` (no copy); DopdError when the sizes disagree."""
    meta = unpack(header)
    dtype = _DTYPES.get(meta.get("dtype"))
    require(dtype is not None, f"unsupported KV dtype {meta.get('dtype')!r}")
    shape = tuple(int(s) for s in meta["shape"])
    expected = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
    require(body.nbytes == expected, f"KV frame of {body.nbytes} bytes, header says {expected}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only ZMQ buffer: the import only reads it
        raw = torch.frombuffer(body, dtype=torch.uint8) if expected else torch.empty(0,
                                                                                      dtype=torch.uint8)
    return KVPayload(raw.view(dtype).reshape(shape))
