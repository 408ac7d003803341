"""Self-calibration of ``dopd serve --mode real``: the machine's own step times as the belief.

A deployment in real mode predicts step times (router placement, admission control, the
policy's solver) through one :class:`~dopd.control.calibration.CalibratedLatency`. Its base is
the configured model (``perf_model`` on ``gpu``), which is not the machine the workers run on.
Self-calibration replaces that base by a fit of the machine: :func:`measure_fit` runs the
profiler of ``dopd profile`` (:func:`dopd.engine.profiler.profile_engine`, grid
:data:`~dopd.engine.profiler.SERVE_GRID`) on an engine built exactly as worker 0 builds its own
(:func:`dopd.serve.engines.build_engine`: same model, device, dtype, threads, KV size and batch
limits), in a spawned process that is killed after ``timeout_s``, timing each whole engine step
as the workers time theirs. It fits the chunked calibration form (``dopd.perf.chunked``) on
the grid and reports its error on held-back shapes. The online calibrator then keeps
correcting from the fit.

A fit is a :class:`CalibrationFit`: the document ``dopd profile --out`` writes (coefficients,
the fit's and the held-back errors, where it was measured), which ``--calibration FILE`` loads
(no measurement) and ``--save-calibration FILE`` writes. :class:`SelfCalibration` is the
deployment's state of it (``off``, ``measuring``, ``fitted``, ``loaded``, ``failed``), shown
under ``calibration.self_calibration`` in ``/v1/cluster``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from dopd.errors import DopdError, require
from dopd.perf.chunked import ChunkedCoefficients, ChunkedLatencyModel
from dopd.perf.chunked_calibration import chunked_from_dict, is_chunked_dict

MODES = ("start", "background", "off")
"""``start``: measure before the workers start and listen after the fit; ``background``: listen
at once, measure after the workers are ready and switch the belief when the fit is done (the
configured model until then); ``off``: no measurement."""

KILL_WAIT_S = 5.0
POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class CalibrationFit:
    """A fit of the chunked form and what is known of it.

    ``document`` is the JSON of ``dopd profile --out`` (``form``, ``coefficients`` and, when
    measured, ``fit``, ``held_back`` and ``measured_on``); ``source`` is ``measured`` or the
    file it was loaded from; ``seconds`` how long the measurement took (None when loaded)."""

    coefficients: ChunkedCoefficients
    document: dict[str, Any]
    source: str
    seconds: float | None = None

    def latency_model(self, kv_capacity_tokens: int | None, name: str) -> ChunkedLatencyModel:
        """The fit as a latency model (seconds)."""
        return ChunkedLatencyModel(self.coefficients, kv_capacity_tokens, name=name)

    def errors(self, key: str) -> dict[str, Any] | None:
        """``fit`` or ``held_back``: ``{"steps", "median_rel_error", "max_rel_error"}`` or
        None when the document has none."""
        value = self.document.get(key)
        return dict(value) if isinstance(value, dict) else None


def fit_from_document(document: object, source: str, seconds: float | None = None
                      ) -> CalibrationFit:
    """A :class:`CalibrationFit` of a parsed document; ``DopdError`` naming ``source`` if it is
    not a chunked-form calibration."""
    require(is_chunked_dict(document), f"{source}: not a chunked-form calibration (the JSON "
            f"file that dopd profile --out or dopd serve --save-calibration writes)")
    coefficients = chunked_from_dict(document, source)
    assert isinstance(document, dict)
    return CalibrationFit(coefficients, dict(document), source, seconds)


def load_fit(path: str | Path) -> CalibrationFit:
    """The fit in the JSON file at ``path``; ``DopdError`` for a missing or malformed file."""
    p = Path(path)
    require(p.is_file(), f"calibration file {str(p)!r} not found")
    try:
        document = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DopdError(f"calibration file {str(p)!r}: {exc}") from None
    return fit_from_document(document, str(p))


def save_fit(fit: CalibrationFit, path: str | Path) -> None:
    """Write ``fit``'s document to ``path`` (a file ``--calibration`` and ``dopd simulate
    --calibration`` read); its folder is created."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    document = dict(fit.document)
    if fit.seconds is not None:
        document["seconds"] = round(fit.seconds, 3)
    p.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def describe_fit(fit: CalibrationFit) -> str:
    """One line on ``fit``: steps, time taken and errors (fitted and held-back shapes)."""
    parts = []
    mine, held = fit.errors("fit"), fit.errors("held_back")
    if mine is not None:
        parts.append(f"{mine['steps']} steps fitted (median error "
                     f"{100 * mine['median_rel_error']:.1f} %)")
    if held is not None:
        parts.append(f"{held['steps']} held back: median {100 * held['median_rel_error']:.1f} "
                     f"%, worst {100 * held['max_rel_error']:.1f} %")
    if fit.seconds is not None:
        parts.append(f"measured in {fit.seconds:.1f} s")
    return ", ".join(parts) or f"coefficients from {fit.source}"


def check_fit_path(path: str, option: str) -> None:
    """``DopdError`` unless ``path`` can be a fit file (``.json``, not a folder)."""
    p = Path(path)
    require(p.suffix.lower() == ".json", f"{option} must be a .json file, got {path!r}")
    require(not p.is_dir(), f"{option} {path} is a folder; give a file name")


def _measure_child(spec: Any, grid: Any, conn: Connection) -> None:
    """The measuring process: build worker 0's engine, profile it, send the document."""
    try:
        import torch

        from dopd.engine.profiler import profile_document, profile_engine
        from dopd.serve.engines import build_engine

        engine = build_engine(spec)
        start = time.perf_counter()
        result = profile_engine(engine, grid, seed=spec.seed, wall=True)
        seconds = time.perf_counter() - start
        document = profile_document(result, {
            "model": spec.model, "device": str(engine.model.device), "dtype": str(
                engine.model.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine(), "grid": "serve", "repeats": grid.repeats,
            "clock": "engine step (wall)"})
        conn.send(("ok", document, seconds))
    except BaseException as exc:  # reported to the parent, which decides
        conn.send(("error", f"{type(exc).__name__}: {exc}", 0.0))
    finally:
        conn.close()


def measure_fit(spec: Any, grid: Any = None, timeout_s: float = 120.0,
                stop: threading.Event | None = None) -> CalibrationFit:
    """Measure the engine of ``spec`` (a :class:`~dopd.serve.engines.EngineSpec`) over ``grid``
    (None: :data:`~dopd.engine.profiler.SERVE_GRID`) in a spawned process and fit the chunked
    form (module docstring). ``DopdError`` if it fails, takes longer than ``timeout_s`` or
    ``stop`` is set (the process is then killed)."""
    from dopd.engine.profiler import SERVE_GRID

    require(timeout_s > 0, f"self-calibration timeout must be > 0 s, got {timeout_s}")
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_measure_child, args=(spec, grid or SERVE_GRID, send),
                       daemon=True, name="dopd-self-calibration")
    proc.start()
    send.close()
    done = False
    try:
        deadline = time.monotonic() + timeout_s
        while not recv.poll(min(POLL_S, max(0.0, deadline - time.monotonic()))):
            if stop is not None and stop.is_set():
                raise DopdError("self-calibration stopped")
            if time.monotonic() >= deadline:
                raise DopdError(f"self-calibration took more than {timeout_s:g} s; use "
                                "--no-self-calibration or --calibration FILE")
        try:
            status, payload, seconds = recv.recv()
            done = True
        except EOFError:
            proc.join(KILL_WAIT_S)
            raise DopdError(f"self-calibration process exited with code {proc.exitcode}; "
                            "use --no-self-calibration or --calibration FILE") from None
    finally:
        recv.close()
        proc.join(KILL_WAIT_S if done else 0.0)
        if proc.is_alive():
            proc.kill()
            proc.join(KILL_WAIT_S)
    require(status == "ok", f"self-calibration failed: {payload}")
    return fit_from_document(payload, "measured", float(seconds))


class SelfCalibration:
    """A deployment's self-calibration: its status and fit (front end only).

    ``status``: ``off`` (none asked for), ``pending`` (to be measured), ``measuring``,
    ``fitted`` (measured here), ``loaded`` (the configured model is a ``--calibration``
    file) or ``failed`` (``error`` says why; the belief stays the configured model)."""

    def __init__(self, status: str = "off") -> None:
        self.status = status
        self.fit: CalibrationFit | None = None
        self.error = ""
        self.saved_to: str | None = None

    def view(self) -> dict[str, Any]:
        """The ``self_calibration`` field of ``/v1/cluster``: ``status``, ``source``,
        ``seconds`` (the measurement), ``coefficients`` (ms, the chunked form), ``fit`` and
        ``held_back`` (``steps``, ``median_rel_error``, ``max_rel_error``: the fit's error on
        the shapes it was fitted on and on shapes kept out of it), ``measured_on``,
        ``saved_to`` and ``error``."""
        fit = self.fit
        return {"status": self.status, "source": None if fit is None else fit.source,
                "seconds": None if fit is None else fit.seconds,
                "coefficients": None if fit is None else fit.document.get("coefficients"),
                "fit": None if fit is None else fit.errors("fit"),
                "held_back": None if fit is None else fit.errors("held_back"),
                "measured_on": None if fit is None else fit.document.get("measured_on"),
                "saved_to": self.saved_to, "error": self.error or None}
