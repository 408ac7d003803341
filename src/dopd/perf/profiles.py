"""Measured operator profiles: per-layer times outside attention and TP all-reduce times.

A profile is a folder in the format of Vidur's ``data/profiling`` (milliseconds):

- ``*_mlp.csv``: per-operator times of one transformer layer outside attention, one row per
  ``num_tokens`` and ``num_tensor_parallel_workers``, columns ``time_stats.<op>.median`` for the
  operators in :data:`LAYER_OPS`, and the model's shape (``n_embd``, ``n_expanded_embd``,
  ``n_head``, ``n_kv_head``, ``vocab_size``);
- ``*all_reduce.csv`` (optional, needed for TP > 1): ``time_stats.all_reduce.median`` over message
  ``size`` in bytes and ``num_workers``, rows with ``devices_per_node == num_workers`` (one node);
- ``manifest.json`` (optional): ``{"name": ..., "gpu": ..., "sha256": {file: digest}}``; when it
  names a GPU the profile applies to that GPU type only.

The step cost outside attention for ``T`` tokens on ``tp`` GPUs composes as Vidur does::

    layers * (sum of the per-layer operators at T) + 2 * layers * all_reduce(T * hidden * 2 bytes)

(the embedding gather and the LM head are not in it). Times between profiled token counts are
interpolated linearly, beyond the largest extrapolated linearly (see :func:`_interp`).
``vidur-a100`` is the shipped profile (Llama-3-8B on A100-80GB, TP 1-8; see its README).
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from dopd.errors import DopdError, require
from dopd.perf.model_catalog import ModelSpec

LAYER_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
             "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
"""Operators of one layer outside attention (Vidur counts the residual ``add`` once per layer)."""

BUILTIN_PROFILES = {"vidur-a100": "vidur_a100"}
"""Shipped profile name -> folder under ``dopd/perf/data``."""


@dataclass(frozen=True, slots=True)
class OperatorProfile:
    """One profile's tables (see the module docstring).

    ``layer_ms[tp]`` is ``(tokens, per-layer ms)`` with tokens ascending and unique (repeated
    measurements averaged); ``allreduce_ms[workers]`` is ``(message bytes, ms)``. ``shape`` is
    ``(hidden, ffn, heads, kv_heads, vocab)`` of the profiled model.
    """

    name: str
    gpu: str | None
    shape: tuple[int, int, int, int, int]
    layer_ms: dict[int, tuple[tuple[float, ...], tuple[float, ...]]]
    allreduce_ms: dict[int, tuple[tuple[float, ...], tuple[float, ...]]]

    @property
    def tp_degrees(self) -> tuple[int, ...]:
        return tuple(sorted(self.layer_ms))

    def check_model(self, model: ModelSpec) -> None:
        """``DopdError`` unless ``model`` has the profiled model's shape."""
        mine = (model.hidden, model.ffn, model.heads, model.kv_heads, model.vocab)
        require(mine == self.shape,
                f"profile {self.name} was measured for a model of (hidden, ffn, heads, kv_heads, "
                f"vocab) = {self.shape}, not {model.name} {mine}")

    def check_tp(self, tp: int) -> None:
        degrees = ", ".join(map(str, self.tp_degrees))
        require(tp in self.layer_ms, f"profile {self.name} has TP degrees {degrees}, not {tp}")
        require(tp == 1 or tp in self.allreduce_ms,
                f"profile {self.name} has no all-reduce times for {tp} GPUs")

    def nonattention_ms(self, model: ModelSpec, tp: int, tokens: np.ndarray) -> np.ndarray:
        """Step time outside attention (ms) at each token count in ``tokens`` (module doc)."""
        self.check_tp(tp)
        t = np.asarray(tokens, dtype=float)
        xs, ys = (np.asarray(v) for v in self.layer_ms[tp])
        return model.layers * _interp(t, xs, ys) + self.allreduce_step_ms(model, tp, t)

    def allreduce_step_ms(self, model: ModelSpec, tp: int, tokens: np.ndarray) -> np.ndarray:
        """The TP all-reduces of one step (ms): two per layer of ``tokens * hidden * 2`` bytes."""
        t = np.asarray(tokens, dtype=float)
        if tp == 1:
            return np.zeros_like(t)
        sizes, times = (np.asarray(v) for v in self.allreduce_ms[tp])
        return 2 * model.layers * _interp(t * model.hidden * 2.0, sizes, times)


def _interp(x: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Linear interpolation, clamped below the first point; beyond the last point, a line from
    it with the least-squares slope of the top quarter of the points (single measurements
    there are noisy, so the last segment alone can even slope down)."""
    out = np.interp(x, xs, ys)
    if len(xs) >= 2:
        top = max(2, len(xs) // 4)
        slope = max(0.0, float(np.polyfit(xs[-top:], ys[-top:], 1)[0]))
        out = np.where(x > xs[-1], ys[-1] + slope * (x - xs[-1]), out)
    return out


def profile_names() -> list[str]:
    """Names of the shipped profiles."""
    return sorted(BUILTIN_PROFILES)


def builtin_profile_dir(name: str) -> Path:
    """Folder of the shipped profile ``name``."""
    key = name.strip().lower()
    require(key in BUILTIN_PROFILES,
            f"unknown profile {name!r} (shipped: {', '.join(profile_names())})")
    return Path(str(resources.files("dopd.perf").joinpath("data", BUILTIN_PROFILES[key])))


def verify_manifest(folder: Path) -> dict[str, str]:
    """Check the sha256 of every file the folder's ``manifest.json`` lists; return the digests."""
    raw = _manifest(folder)
    digests = raw.get("sha256", {})
    require(isinstance(digests, dict), f"{folder / 'manifest.json'}: 'sha256' must be an object")
    for name, digest in digests.items():
        path = folder / name
        require(path.is_file(), f"profile file {name} listed in the manifest is missing")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        require(actual == digest, f"profile file {name}: sha256 {actual} != manifest {digest}")
    return {str(k): str(v) for k, v in digests.items()}


def _manifest(folder: Path) -> dict[str, object]:
    path = folder / "manifest.json"
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DopdError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    require(isinstance(raw, dict), f"{path}: expected a JSON object")
    return raw


def load_profile(source: str | Path) -> OperatorProfile:
    """The profile named ``source`` (a shipped name) or in the folder ``source``."""
    text = str(source).strip()
    if text.lower() in BUILTIN_PROFILES:
        return _load_folder(str(builtin_profile_dir(text)))
    folder = Path(text)
    require(folder.is_dir(), f"profile {text!r} is neither a shipped name "
            f"({', '.join(profile_names())}) nor a folder")
    return _load_folder(str(folder.resolve()))


@cache
def _load_folder(folder_text: str) -> OperatorProfile:
    folder = Path(folder_text)
    manifest = _manifest(folder)
    mlp = sorted(folder.glob("*_mlp.csv"))
    require(len(mlp) == 1, f"profile folder {folder.name}: expected one *_mlp.csv, "
            f"found {len(mlp)}")
    rows = _read_csv(mlp[0])
    columns = [f"time_stats.{op}.median" for op in LAYER_OPS]
    shape_cols = ("n_embd", "n_expanded_embd", "n_head", "n_kv_head", "vocab_size")
    missing = [c for c in (*columns, *shape_cols, "num_tokens", "num_tensor_parallel_workers")
               if c not in rows[0]]
    require(not missing, f"{mlp[0].name}: missing columns {', '.join(missing)}")
    shapes = {tuple(int(float(r[c])) for c in shape_cols) for r in rows}
    require(len(shapes) == 1, f"{mlp[0].name}: rows of more than one model shape")
    per_tp: dict[int, dict[int, list[float]]] = {}
    for line, r in enumerate(rows, start=2):
        try:
            tp, tokens = int(r["num_tensor_parallel_workers"]), int(r["num_tokens"])
            ms = sum(float(r[c]) for c in columns)
        except ValueError as exc:
            raise DopdError(f"{mlp[0].name} line {line}: {exc}") from None
        require(tp >= 1 and tokens >= 1 and ms > 0, f"{mlp[0].name} line {line}: bad row")
        per_tp.setdefault(tp, {}).setdefault(tokens, []).append(ms)
    layer_ms = {tp: _table(points) for tp, points in per_tp.items()}
    allreduce: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {}
    for path in sorted(folder.glob("*all_reduce.csv")):
        by_workers: dict[int, dict[int, list[float]]] = {}
        for r in _read_csv(path):
            workers = int(r["num_workers"])
            if int(r["devices_per_node"]) == workers:
                by_workers.setdefault(workers, {}).setdefault(int(r["size"]), []).append(
                    float(r["time_stats.all_reduce.median"]))
        allreduce.update({w: _table(points) for w, points in by_workers.items()})
    gpu = manifest.get("gpu")
    shape = next(iter(shapes))
    return OperatorProfile(
        name=str(manifest.get("name", folder.name)), gpu=None if gpu is None else str(gpu),
        shape=(shape[0], shape[1], shape[2], shape[3], shape[4]), layer_ms=layer_ms,
        allreduce_ms=allreduce,
    )


def _table(points: dict[int, list[float]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xs = sorted(points)
    return tuple(float(x) for x in xs), tuple(float(np.mean(points[x])) for x in xs)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    require(bool(rows), f"{path.name}: no rows")
    return rows
