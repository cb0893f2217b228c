"""SLO controller: keeps interactive end-to-end latency under its target by acting before it breaks.

Targets are end-to-end p95 latencies per traffic class (`targets`, e.g. {"interactive": 2.0,
"batch": 60.0}: from the manifest's `slo`, overridden by `compress serve` flags). It tracks the
rolling p95 of each class over the last `window_s` seconds and, for each class with a target, a
state from p95 / target:

  ratio < tight_at            OK     normal batching waits and routing
  tight_at <= ratio < shed_at TIGHT  no batching wait (requests start at once), `auto` routes with
                                     lower thresholds (the heuristic's quality floor, the learned
                                     router's keep): smaller, faster tiers
  ratio >= shed_at            SHED   also refuses new batch-class requests (503 + Retry-After)
  ratio >= 1                  BREACH also refuses new interactive requests, except one probe per
                                     `probe_every_s` that measures the current latency

The interactive state drives the actions (interactive is the protected class; batch work only fills
idle capacity). A batch target is tracked and reported (its state is a metric) but never sheds
interactive work.

Recovery is automatic and does not wait for the window to forget an overload: when the completions
of the last `recent_s` seconds (at least `min_samples` of them: probes, the drained backlog) have a
p95 under `tight_at` x target, the state is OK again even though the window still holds the slow
ones. Without the probes, a BREACH that refuses every request would get no new samples and would
last a whole window after the load had gone (seen on the GPU: 30 s of 503s at a light load right
after an overload). With fewer than `min_samples` completions in the window the state is OK. Pure
logic with an injectable clock; app.py wires it in.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum


class State(IntEnum):
    OK = 0
    TIGHT = 1
    SHED = 2
    BREACH = 3


@dataclass(frozen=True)
class SLOConfig:
    targets: dict[str, float] = field(default_factory=lambda: {"interactive": 2.0})  # class -> p95 target (s)
    window_s: float = 30.0
    tight_at: float = 0.6
    shed_at: float = 0.85
    min_samples: int = 5  # below this many recent samples the p95 is not trusted: state OK
    recent_s: float = 5.0  # fast completions this recent end a TIGHT/SHED/BREACH state early
    probe_every_s: float = 0.5  # in BREACH, one interactive request per this interval is let through
    floor_drop: float = 0.15  # how far TIGHT lowers the router's thresholds (quality floor, keep)


class SLOController:
    def __init__(self, config: SLOConfig = SLOConfig()):
        self.config = config
        self._samples: dict[str, deque[tuple[float, float]]] = {}  # class -> (time, latency)
        self._lock = threading.Lock()
        self._last_probe = -math.inf
        # p95s computed at one `now` since the last observe(): a request asks for the state several times
        # (metrics, batching wait, routing, admission) at the same `now`, and each would sort the window.
        self._memo: dict[tuple[str, float, float | None], float | None] = {}

    def observe(self, cls: str, latency_s: float, now: float) -> None:
        with self._lock:
            self._samples.setdefault(cls, deque()).append((now, latency_s))
            self._memo.clear()

    def p95(self, cls: str, now: float, span_s: float | None = None) -> float | None:
        """p95 latency of `cls` over the last `span_s` seconds (default: the window); None when too few."""
        key = (cls, now, span_s)
        with self._lock:
            if key in self._memo:
                return self._memo[key]
            if any(k[1] != now for k in self._memo):
                self._memo.clear()
            q = self._samples.get(cls) or deque()
            while q and q[0][0] < now - self.config.window_s:
                q.popleft()
            span = self.config.window_s if span_s is None else span_s
            xs = sorted(lat for t, lat in q if t >= now - span)
            p = xs[min(len(xs) - 1, math.ceil(0.95 * len(xs)) - 1)] if len(xs) >= self.config.min_samples else None
            self._memo[key] = p
        return p

    def state(self, now: float, cls: str = "interactive") -> State:
        """The state of `cls` (OK when it has no target or too few recent samples)."""
        target = self.config.targets.get(cls)
        p = self.p95(cls, now) if target else None
        if p is None:
            return State.OK
        ratio = p / target
        if ratio >= self.config.tight_at:
            recent = self.p95(cls, now, self.config.recent_s)
            if recent is not None and recent / target < self.config.tight_at:
                return State.OK  # recovered: the window's slow samples are history
        if ratio >= 1.0:
            return State.BREACH
        if ratio >= self.config.shed_at:
            return State.SHED
        if ratio >= self.config.tight_at:
            return State.TIGHT
        return State.OK

    def admit(self, cls: str, now: float) -> bool:
        s = self.state(now)
        if s >= State.BREACH:
            with self._lock:
                if cls == "interactive" and now - self._last_probe >= self.config.probe_every_s:
                    self._last_probe = now
                    return True  # a probe: its latency tells when the overload is over
            return False
        return not (s >= State.SHED and cls != "interactive")

    def wait_scale(self, now: float) -> float:
        """Factor for the batchers' max wait: no waiting for company once latency is tight."""
        return 1.0 if self.state(now) == State.OK else 0.0

    def route_floor(self, base: float, now: float) -> float:
        """A routing threshold (the heuristic's floor or the learned router's keep) under the current state."""
        return base if self.state(now) == State.OK else max(0.0, base - self.config.floor_drop)
