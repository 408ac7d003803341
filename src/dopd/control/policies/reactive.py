"""The ``reactive`` cluster policy: threshold autoscaling of the P/D split on load signals.

A fair rule-based baseline, in the style of Dynamo's load-based planner: no model, no forecast.
Every tick it smooths two pressure signals of the cluster view (exponentially, weight
``alpha``):

- prefill: queued prompt work per ACTIVE prefill instance, in seconds at full-batch throughput,
  against the TTFT SLO (hot above ``hot`` x SLO);
- decode: the largest of mean decode KV use, mean decode batch over ``max_num_seqs``, and
  decode step time over the TPOT SLO (hot above ``kv_hot``); prefilled
  requests waiting for decode memory (more than one per decode instance) make it hot as well.

Every ``interval`` seconds, when one side is hot and the other is not, one instance moves
from the other side to the hot one (the other side keeps at least one instance), through the
same manager as ``dopd`` (cheapest instance, drain, dwell ``cooldown`` seconds, the hot state
must hold for ``sustain`` consecutive checks). Spec: ``reactive[:key=value...]`` with keys
``interval`` (5 s), ``cooldown`` (30 s), ``sustain`` (2), ``hot`` (0.5), ``kv_hot`` (0.85),
``alpha`` (0.3) and ``init`` (``P/D``, default half and half).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dopd.control.manager import ManagerConfig, PDManager, Split, committed_split
from dopd.control.manager.decisions import DecisionLog
from dopd.control.policies.base import POLICIES, Action, ClusterPolicy, ClusterView, PolicyContext
from dopd.control.policies.signals import option_float, option_int, parse_options
from dopd.control.ratio import InstanceModel
from dopd.errors import require
from dopd.types import SLO, InstanceState, Role

KEYS = {"interval", "cooldown", "sustain", "hot", "kv_hot", "init", "alpha"}
_REFERENCE_PROMPT = 1024.0


class ReactivePolicy(ClusterPolicy):
    """Threshold autoscaling of roles (see the module doc); ``decisions`` is its log."""

    wants_ticks = True
    router = "pd-pair"

    def __init__(self, args: str, context: PolicyContext) -> None:
        require(context.slo is not None, "policy reactive needs an SLO (TTFT and TPOT targets)")
        assert context.slo is not None
        n = context.config.instances
        require(n >= 2, f"policy reactive needs at least 2 instances, the cluster has {n}")
        _, values = parse_options("reactive", args, set(), KEYS)
        self.slo: SLO = context.slo
        self.interval_s = option_float("reactive", values, "interval", 5.0)
        self.sustain = option_int("reactive", values, "sustain", 2)
        self.hot = option_float("reactive", values, "hot", 0.5)
        self.kv_hot = option_float("reactive", values, "kv_hot", 0.85)
        self.alpha = option_float("reactive", values, "alpha", 0.3)
        require(self.alpha <= 1, "policy reactive: alpha must be in (0, 1]")
        cooldown = option_float("reactive", values, "cooldown", 30.0, low=-1e-9)
        self.init = (n // 2, n - n // 2)
        if "init" in values:
            parts = values["init"].split("/")
            require(len(parts) == 2 and all(p.isdigit() and int(p) >= 1 for p in parts)
                    and int(parts[0]) + int(parts[1]) == n,
                    f"policy reactive: init must be P/D with P + D = {n}, got {values['init']!r}")
            self.init = (int(parts[0]), int(parts[1]))
        self.name = "reactive" + "".join(f":{a.strip()}" for a in args.split(":") if a.strip())
        inst = InstanceModel.from_cluster_config(context.config, context.latency)
        n_ref = np.array([_REFERENCE_PROMPT])
        _, fixed, var = inst.prefill_tables(n_ref)
        self.prefill_tok_s = _REFERENCE_PROMPT / float(var[0] + fixed[0]
                                                       / inst.batch_limit(n_ref)[0])
        self.max_seqs = context.config.max_num_seqs
        self.manager = PDManager(ManagerConfig(
            confirm=1, margin=n, reverse_confirm=1, dwell_s=cooldown, max_changes=1,
            alarm_changes=1, max_in_flight=1))
        self.log = DecisionLog(self.name)
        self.decisions = self.log.records
        self._p = 0.0
        self._d = 0.0
        self._hot_p = 0
        self._hot_d = 0
        self._next = self.interval_s

    def initial_roles(self, instances: int) -> list[Role]:
        p, d = self.init
        return [Role.PREFILL] * p + [Role.DECODE] * d

    def _signals(self, view: ClusterView) -> tuple[float, float]:
        active = [v for v in view.instances if v.state == InstanceState.ACTIVE]
        pre = [v for v in active if v.role == Role.PREFILL]
        dec = [v for v in active if v.role == Role.DECODE]
        queued = sum(v.queued_prefill_tokens for v in view.instances)
        p = queued / max(len(pre), 1) / self.prefill_tok_s / self.slo.ttft_s
        if not dec:
            return p, 1.0
        kv = float(np.mean([v.kv_use for v in dec]))
        batch = float(np.mean([v.decode_batch for v in dec])) / self.max_seqs
        step = max(v.recent_step_s for v in dec) / self.slo.tpot_s
        waiting = sum(v.pending_decodes for v in view.instances)
        d = max(kv, batch, step, self.kv_hot + 0.01 if waiting > len(dec) else 0.0)
        return p, d

    def on_tick(self, now: float, view: ClusterView) -> Sequence[Action]:
        self.manager.track(now, view)
        p, d = self._signals(view)
        a = self.alpha
        self._p += a * (p - self._p)
        self._d += a * (d - self._d)
        if now + 1e-9 < self._next:
            return ()
        while self._next <= now + 1e-9:
            self._next += self.interval_s
        hot_p, hot_d = self._p > self.hot, self._d > self.kv_hot
        self._hot_p = self._hot_p + 1 if hot_p and not hot_d else 0
        self._hot_d = self._hot_d + 1 if hot_d and not hot_p else 0
        current = committed_split(view)
        target = current
        why = "balanced"
        if self._hot_p >= self.sustain and current.decode > 1:
            target = Split(current.prefill + 1, current.decode - 1, current.mixed)
            why = "prefill hot"
        elif self._hot_d >= self.sustain and current.prefill > 1:
            target = Split(current.prefill - 1, current.decode + 1, current.mixed)
            why = "decode hot"
        elif hot_p and hot_d:
            why = "both hot"
        decision = self.manager.step(now, view, target)
        if decision.actions:
            self._hot_p = self._hot_d = 0
        self.log.add(now, reason=f"{why}: {decision.reason}", actions=decision.actions,
                     target=target, current=current,
                     observation={"prefill_pressure": self._p, "decode_pressure": self._d})
        return decision.actions


def _factory(args: str, context: PolicyContext) -> ClusterPolicy:
    return ReactivePolicy(args, context)


POLICIES.register("reactive", _factory)
