"""Spec options of the ``dopd`` cluster policy (``dopd:flag:key=value:...``).

Flags: ``noforecast`` (plan on the last window as measured, the reactive ablation),
``novariance`` (the solver drops the prompt-length variance term), ``nolength`` (no
length-aware routing: the plain ``pd-pair`` router), ``nocalibrate`` (no online correction
factors), ``elastic`` (an elastic pool: the solver sizes it, instances are added and removed),
``mixed`` (hybrid: instances the minimal split does not need serve both phases),
``nolittle`` (output lengths from finished requests only, without the decode side's
Little's-law estimate), ``hybrid`` (all instances MIXED while the colocated predictor says the
TPOT SLO holds, the solver's P/D split otherwise: :mod:`.hybrid`; the default, unless
``mixed`` or ``elastic`` is given), ``nohybrid`` (the P/D split alone: the ablation, and
the default before issue 11).

Keys: ``forecast=`` (forecaster spec of the arrival rate, default ``ewma``), ``lengths=``
(forecaster spec of the length moments, default ``constant``: the last window as measured,
since a step in the length mix must be followed at once and a window holds many requests),
``interval=``
(seconds between plans, default 2: bursts of tens of seconds are met while they last; 5
averages 0.5 points lower over the paper grid, most on the bursty ShareGPT scenarios),
``window=`` (monitor window, default the interval),
``rate=mean|upper`` (rate the fixed-pool solver plans for, default ``upper``: the forecast's
upper bound, so the prefill side is sized for bursts; it over-provisions the decode side, which
averages bursts over the seconds a request decodes, but the length-aware router's bypass lends
decode instances' spare step time to prompts; ``mean`` averages 1.2 points lower over the
paper suite at 1, 1.25 and 1.5x its comparison loads: ``benchmarks/bench_paper_grid.py``),
``init=auto|P/D|mixed`` (initial split),
``stick=`` (keep the running split while its predicted attainment is within this of the
best, default 0.02), ``outwin=`` (seconds of finished requests the output lengths are measured
over, default 15), ``nudge=`` (plans in a row one side alone must be short before one
instance moves to it although the model does not ask for it, default 2; a large value turns
the feedback off), ``drain=finish|migrate`` (a decode instance that switches role lets its
decodes finish in place, or moves their KV to the other decode instances; default finish),
the hybrid's ``enter=`` / ``exit=`` (colocated TPOT P90 over the SLO that enters / leaves
all-mixed, defaults 0.6 / 0.85), ``hold=`` (plans in a row below ``enter`` before entering,
default 4), ``exitconfirm=`` (plans in a row above ``exit`` before leaving, default 3: the
mode is chosen at the forecast's mean rate, and one plan of a burst is no reason to drain the
pool), ``gain=`` (leave all-mixed only for a split predicted within this attainment of
colocation, default 0; > -1), ``modechanges=`` (instances moved at once on a mode
change, default 4), ``veto=on|off`` (leave all-mixed only for a split predicted strictly
better than colocation, and, on an exit for observed misses, better than the attainment
observed; default on), ``mixtok=step|auto|off|N`` (prompt tokens a MIXED instance's step with
decodes may take: :mod:`.mixed_budget`; ``auto`` one budget, ``step`` (the default) that budget
capped further per step by the decodes it carries), ``mixshare=`` (the share of the TPOT SLO a
chunk may add to a decode step, under ``auto`` and ``step``; default 0.5 under ``auto``, 1.0
under ``step``), ``mixstep=`` (the share of the TPOT SLO a whole MIXED step may take under
``step``, default 0.9), ``chunkbound=on|off`` (the colocated predictor bounds TPOT by the
longest step the chunk caps allow, default on); these four defaults were chosen on the
generalize suite's seed 0 (``docs/results/policy_tuning.md``), ``damp=on|off``
(the re-entry cooldown doubles after every flap, an exit soon after an entry; default off: on
the generalize suite's seed 0 it changed nothing),
and the manager's ``confirm=``, ``margin=``, ``dwell=``, ``changes=``, ``switchrate=`` (the
switch budget's refill, moves per instance-hour, default 2: a steady load settles, then costs at
most 2 switches per instance-hour whatever the forecast's noise; ``inf`` turns the budget off)
and ``switchburst=`` (moves the budget holds, default one per instance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from dopd.control.forecast import make_forecaster
from dopd.control.manager import ManagerConfig
from dopd.control.policies.hybrid import HybridConfig
from dopd.control.policies.mixed_budget import parse_mixtok
from dopd.control.policies.signals import (
    option_float,
    option_int,
    option_on_off,
    parse_options,
)
from dopd.errors import require

FLAGS = {"noforecast", "novariance", "nolength", "nocalibrate", "elastic", "mixed", "nolittle",
         "hybrid", "nohybrid"}
KEYS = {"forecast", "interval", "window", "rate", "init", "confirm", "margin", "dwell",
        "changes", "stick", "outwin", "nudge", "lengths", "drain", "enter", "exit", "hold",
        "modechanges", "gain", "switchrate", "switchburst", "exitconfirm", "veto", "mixtok",
        "mixstep", "mixshare", "damp", "chunkbound"}
HYBRID_KEYS = {"enter", "exit", "hold", "modechanges", "gain", "exitconfirm", "veto", "mixtok",
               "mixstep", "mixshare", "damp", "chunkbound"}
HYBRID_DEFAULT = True
"""Whether ``dopd`` runs the hybrid without the ``hybrid`` flag."""

DEFAULT_MANAGER = ManagerConfig(confirm=2, margin=2, reverse_confirm=4, reverse_window_s=60.0,
                                dwell_s=20.0, max_changes=1, alarm_changes=2, max_in_flight=2,
                                switch_rate_h=2.0)


@dataclass(frozen=True)
class DopdOptions:
    """Parsed options of the ``dopd`` policy (see the module doc)."""

    forecast: str | None = "ewma"
    variance: bool = True
    length_aware: bool = True
    calibrate: bool = True
    elastic: bool = False
    mixed: bool = False
    little: bool = True
    interval_s: float = 2.0
    window_s: float | None = None
    rate: str = "upper"
    init: str = "auto"
    stick: float = 0.02
    output_window_s: float = 15.0
    nudge: int = 2
    lengths: str = "constant"
    hybrid: HybridConfig | None = None
    mixed_tokens: int | str | None = None
    mixed_share: float = 0.5
    mixed_step_share: float = 0.9
    chunk_bound: bool = True
    manager: ManagerConfig = field(default=DEFAULT_MANAGER)
    spec: str = "dopd"

    @property
    def monitor_window_s(self) -> float:
        return self.interval_s if self.window_s is None else self.window_s

    @classmethod
    def parse(cls, args: str) -> DopdOptions:
        """Options from the text after ``dopd:``; DopdError on unknown or bad options."""
        flags, values = parse_options("dopd", args, FLAGS, KEYS)
        forecast: str | None = values.get("forecast", "ewma")
        if "noforecast" in flags:
            require("forecast" not in values, "policy dopd: noforecast and forecast= conflict")
            forecast = None
        else:
            assert forecast is not None
            make_forecaster(forecast)  # fails early on a bad spec
        make_forecaster(values.get("lengths", "constant"))
        rate = values.get("rate", "upper").lower()
        require(rate in ("mean", "upper"), f"policy dopd: rate must be mean or upper, got {rate!r}")
        init = values.get("init", "auto").lower()
        if init not in ("auto", "mixed"):
            parts = init.split("/") if "/" in init else init.split("-")
            require(len(parts) == 2 and all(p.isdigit() and int(p) >= 1 for p in parts),
                    f"policy dopd: init must be auto, mixed or P/D (e.g. 3/5), got {init!r}")
        drain = values.get("drain", "finish").lower()
        require(drain in ("finish", "migrate"),
                f"policy dopd: drain must be finish or migrate, got {drain!r}")
        base = DEFAULT_MANAGER
        manager = replace(
            base,
            confirm=option_int("dopd", values, "confirm", base.confirm),
            margin=option_int("dopd", values, "margin", base.margin),
            dwell_s=option_float("dopd", values, "dwell", base.dwell_s, low=-1e-9),
            max_changes=option_int("dopd", values, "changes", base.max_changes),
            switch=True,
            elastic="elastic" in flags,
            migrate=drain == "migrate",
            switch_rate_h=math.inf if values.get("switchrate", "").lower() == "inf"
            else option_float("dopd", values, "switchrate", base.switch_rate_h),
            switch_burst=option_float("dopd", values, "switchburst", 0.0, low=0.999)
            if "switchburst" in values else None,
        )
        require(not {"hybrid", "nohybrid"} <= flags, "policy dopd: hybrid and nohybrid conflict")
        require(not ("hybrid" in flags and ("mixed" in flags or "elastic" in flags)),
                "policy dopd: hybrid does not combine with mixed or elastic")
        hybrid_on = "hybrid" in flags or (
            HYBRID_DEFAULT and not {"nohybrid", "mixed", "elastic"} & flags)
        hybrid_keys = HYBRID_KEYS & set(values)
        require(hybrid_on or not hybrid_keys, f"policy dopd: {', '.join(sorted(hybrid_keys))} "
                "apply only with hybrid")
        hybrid = None
        mixed_tokens: int | str | None = None
        veto = values.get("veto", "on").lower()
        require(veto in ("on", "off"), f"policy dopd: veto must be on or off, got {veto!r}")
        damp = values.get("damp", "off").lower()
        require(damp in ("on", "off"), f"policy dopd: damp must be on or off, got {damp!r}")
        if hybrid_on:
            mixed_tokens = parse_mixtok(values.get("mixtok", "step"))
            hybrid = HybridConfig(enter=option_float("dopd", values, "enter", 0.6),
                                  exit=option_float("dopd", values, "exit", 0.85),
                                  hold=option_int("dopd", values, "hold", 4),
                                  exit_confirm=option_int("dopd", values, "exitconfirm", 3),
                                  gain=option_float("dopd", values, "gain", 0.0, low=-1.0),
                                  veto=veto == "on", damp=damp == "on")
            manager = replace(manager, migrate_mixed=True,
                              mode_changes=option_int("dopd", values, "modechanges", 4))
        interval = option_float("dopd", values, "interval", 2.0)
        window = option_float("dopd", values, "window", interval) if "window" in values else None
        spec = "dopd" + "".join(f":{a.strip()}" for a in args.split(":") if a.strip())
        return cls(
            forecast=forecast, variance="novariance" not in flags,
            length_aware="nolength" not in flags, calibrate="nocalibrate" not in flags,
            elastic="elastic" in flags, mixed="mixed" in flags, little="nolittle" not in flags,
            interval_s=interval,
            window_s=window, rate=rate, init=init, manager=manager, spec=spec,
            stick=option_float("dopd", values, "stick", 0.02, low=-1e-9),
            output_window_s=option_float("dopd", values, "outwin", 15.0),
            nudge=option_int("dopd", values, "nudge", 2),
            lengths=values.get("lengths", "constant"), hybrid=hybrid,
            mixed_tokens=mixed_tokens,
            mixed_share=option_float("dopd", values, "mixshare",
                                     1.0 if mixed_tokens == "step" else 0.5),
            mixed_step_share=option_float("dopd", values, "mixstep", 0.9),
            chunk_bound=option_on_off("dopd", values, "chunkbound", True),
        )

    def initial_split(self) -> tuple[int, int] | None:
        """The P/D split named by ``init=P/D``, else None."""
        if self.init in ("auto", "mixed"):
            return None
        parts = self.init.split("/") if "/" in self.init else self.init.split("-")
        return int(parts[0]), int(parts[1])
