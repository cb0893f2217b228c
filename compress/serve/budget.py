"""Token and cost budgets per time window, globally and per API key, with burn-rate and spike alerts.

Windows are fixed (`window_s` long, the first starting when the tracker starts). For each scope (global, and each API
key by a short hash: keys never appear in logs or labels) the tracker keeps what was spent in the
current window and alerts:

- `burn`: spent / elapsed x window_s would exceed the budget before the window ends; once
  per scope and window, once `min_elapsed_s` of the window has passed. This fires *before* the
  budget is gone.
- `exhausted`: the budget is spent; with `hard=True` later requests in the window are refused.
- `spike`: the tokens of the last `spike_window_s` exceed `spike_factor` x the window's average for
  such an interval (and `spike_min_tokens`); at most once per spike interval.

Alerts go to a callback (app.py: a log line, a metric and an optional webhook).
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

GLOBAL = "global"


@dataclass(frozen=True)
class BudgetConfig:
    window_s: float = 3600.0
    max_tokens: int | None = None  # global token budget per window
    max_cost: float | None = None  # global cost budget per window (manifest currency)
    key_max_tokens: int | None = None  # per API key token budget per window
    hard: bool = False  # refuse (429) once a budget is spent
    min_elapsed_s: float = 5.0  # no burn projection from the first seconds of a window
    spike_window_s: float = 60.0
    spike_factor: float = 5.0
    spike_min_tokens: int = 200


@dataclass(frozen=True)
class Alert:
    kind: str  # "burn" | "exhausted" | "spike"
    scope: str  # "global" or "key:<hash>"
    message: str


@dataclass
class _Scope:
    window: int = -1
    tokens: int = 0
    cost: float = 0.0
    recent: deque = field(default_factory=deque)  # (time, tokens)
    alerted: set = field(default_factory=set)
    last_spike: float = float("-inf")


def key_scope(api_key: str) -> str:
    return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


def _scopes_of(api_key: str | None) -> list[str]:
    return [GLOBAL, key_scope(api_key)] if api_key else [GLOBAL]


class BudgetTracker:
    def __init__(self, config: BudgetConfig, on_alert: Callable[[Alert], None] = lambda a: None,
                 start: float = 0.0):
        self.config, self.on_alert, self.start = config, on_alert, start
        self._scopes: dict[str, _Scope] = {}
        self._lock = threading.Lock()

    def _get(self, name: str, now: float) -> _Scope:
        s = self._scopes.setdefault(name, _Scope())
        window = int((now - self.start) // self.config.window_s)
        if window != s.window:
            s.window, s.tokens, s.cost, s.alerted = window, 0, 0.0, set()
        return s

    def _limits(self, name: str) -> tuple[int | None, float | None]:
        if name == GLOBAL:
            return self.config.max_tokens, self.config.max_cost
        return self.config.key_max_tokens, None

    def refusal(self, api_key: str | None, now: float) -> str | None:
        """Why a new request must be refused (hard limits only), or None."""
        if not self.config.hard:
            return None
        with self._lock:
            for name in _scopes_of(api_key):
                s = self._get(name, now)
                max_tokens, max_cost = self._limits(name)
                if max_tokens is not None and s.tokens >= max_tokens:
                    return f"{'global' if name == GLOBAL else 'API key'} token budget of {max_tokens} per " \
                           f"{self.config.window_s:g} s is spent"
                if max_cost is not None and s.cost >= max_cost:
                    return f"cost budget of {max_cost:g} per {self.config.window_s:g} s is spent"
        return None

    def spent(self, now: float) -> tuple[int, float, float]:
        """Global (tokens, cost) spent in the current window, and the seconds of the window elapsed."""
        with self._lock:
            s = self._get(GLOBAL, now)
            return s.tokens, s.cost, now - (self.start + s.window * self.config.window_s)

    def record(self, api_key: str | None, tokens: int, cost: float | None, now: float) -> list[Alert]:
        alerts: list[Alert] = []
        with self._lock:
            for name in _scopes_of(api_key):
                s = self._get(name, now)
                s.tokens += tokens
                s.cost += cost or 0.0
                s.recent.append((now, tokens))
                alerts += self._check(name, s, now)
        for a in alerts:
            self.on_alert(a)
        return alerts

    def _check(self, name: str, s: _Scope, now: float) -> list[Alert]:
        c = self.config
        out = []
        start = self.start + s.window * c.window_s
        elapsed = max(now - start, 1e-9)
        max_tokens, max_cost = self._limits(name)
        for what, spent, limit in (("tokens", s.tokens, max_tokens), ("cost", s.cost, max_cost)):
            if limit is None:
                continue
            if spent >= limit and ("exhausted", what) not in s.alerted:
                s.alerted.add(("exhausted", what))
                out.append(Alert("exhausted", name, f"{name}: {what} budget {limit:g} spent "
                                                    f"({spent:g} after {elapsed:.0f} s of {c.window_s:g} s)"))
            projected = spent / elapsed * c.window_s
            if (projected > limit and elapsed >= c.min_elapsed_s
                    and ("burn", what) not in s.alerted and spent < limit):
                s.alerted.add(("burn", what))
                out.append(Alert("burn", name, f"{name}: {what} burn rate projects {projected:.4g} by the end of "
                                               f"the window, over the budget of {limit:g} "
                                               f"({spent:g} spent in {elapsed:.0f} s)"))
        while s.recent and s.recent[0][0] < now - c.window_s:
            s.recent.popleft()
        last = sum(t for ts, t in s.recent if ts >= now - c.spike_window_s)
        older = sum(t for ts, t in s.recent if ts < now - c.spike_window_s)
        span = min(c.window_s, now - s.recent[0][0]) if s.recent else 0.0
        baseline = older / max(span - c.spike_window_s, c.spike_window_s) * c.spike_window_s
        if (last >= c.spike_min_tokens and last > c.spike_factor * baseline and span > c.spike_window_s
                and now - s.last_spike >= c.spike_window_s):
            s.last_spike = now
            out.append(Alert("spike", name, f"{name}: token spike: {last} tokens in the last "
                                            f"{c.spike_window_s:g} s, usual {baseline:.0f}"))
        return out


class RateLimiter:
    """At most `per_minute` requests per API key (sliding 60 s window); anonymous requests share one
    allowance when the server has no keys."""

    def __init__(self, per_minute: int):
        if per_minute < 1:
            raise ValueError("per_minute >= 1")
        self.per_minute = per_minute
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, api_key: str | None, now: float) -> float | None:
        """None if the request may go ahead (and counts it), else seconds until it could."""
        who = key_scope(api_key) if api_key else "anonymous"
        with self._lock:
            q = self._hits.setdefault(who, deque())
            while q and q[0] <= now - 60.0:
                q.popleft()
            if len(q) >= self.per_minute:
                return q[0] + 60.0 - now
            q.append(now)
            return None
