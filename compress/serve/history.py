"""Bounded in-memory history of `compress serve`: per-minute and per-hour aggregates in ring buffers.

A sampler thread reads the app's Prometheus registry (the counters and histograms /metrics exports)
every `tick_s` seconds and adds what grew since the previous read into the current minute's frame:
one vector of `FIELDS` per (tier, class), plus budget-alert counts and the last value of the SLO and
budget gauges. Closed minutes go into a ring of `minutes` slots (default: one day) and are summed into
hours, kept in a ring of `hours` slots (default: 15 days, two weekly reviews). Memory is bounded by
the ring sizes (about 0.5 kB per (tier, class) per slot), whatever the traffic.

Reading the same counters as Prometheus, with latency percentiles interpolated in the same histogram
buckets as `histogram_quantile`, keeps /dashboard, the weekly review and PromQL over
deploy/prometheus in agreement. `frames_from_samples` turns Prometheus query results (increases per
step) into the same frames, so the review renders either source with one code path.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from prometheus_client import CollectorRegistry

from compress.serve.metrics import _LATENCY_BUCKETS

SCHEMA_VERSION = 1
LE = tuple(float(b) for b in _LATENCY_BUCKETS) + (math.inf,)  # e2e and TTFT share these buckets
_COUNTS = ("ok", "rejected", "errors", "other", "gen_tokens", "prompt_tokens", "cache_hits", "cache_misses",
           "fallbacks", "cost", "shed", "slo_good", "slo_slow", "e2e_sum", "e2e_count", "ttft_sum", "ttft_count")
FIELDS = _COUNTS + tuple(f"e2e_le_{b:g}" for b in LE) + tuple(f"ttft_le_{b:g}" for b in LE)
IDX = {f: i for i, f in enumerate(FIELDS)}
E2E0, TTFT0 = IDX[f"e2e_le_{LE[0]:g}"], IDX[f"ttft_le_{LE[0]:g}"]

# Prometheus sample name -> field, for the per-(tier, class) counters without an extra label.
_PLAIN = {"compress_generation_tokens_total": "gen_tokens", "compress_prompt_tokens_total": "prompt_tokens",
          "compress_fallbacks_total": "fallbacks", "compress_cost_total": "cost",
          "compress_shed_requests_total": "shed", "compress_e2e_request_latency_seconds_sum": "e2e_sum",
          "compress_e2e_request_latency_seconds_count": "e2e_count",
          "compress_time_to_first_token_seconds_sum": "ttft_sum",
          "compress_time_to_first_token_seconds_count": "ttft_count"}
_BUCKETS = {"compress_e2e_request_latency_seconds_bucket": E2E0, "compress_time_to_first_token_seconds_bucket": TTFT0}
# Gauges kept as their last value in a frame: sample name -> the label that names the series.
_GAUGES = {"compress_slo_target_seconds": "class", "compress_slo_p95_seconds": "class",
           "compress_slo_state": "class", "compress_budget_limit": "resource", "compress_budget_spent": "resource"}


def status_field(status: str) -> str:
    if status == "200":
        return "ok"
    if status == "429":
        return "rejected"
    return "errors" if status.startswith("5") else "other"


@dataclass
class Frame:
    """What happened in [start, start + span_s): counter increases per (tier, class), budget alerts by
    kind, and the last value of each gauge (`name:label`, e.g. `compress_slo_target_seconds:interactive`)."""

    start: float
    span_s: float
    cells: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    alerts: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)

    def add(self, other: "Frame") -> None:
        for k, v in other.cells.items():
            if k in self.cells:
                self.cells[k] = self.cells[k] + v
            else:
                self.cells[k] = v.copy()
        for k, v in other.alerts.items():
            self.alerts[k] = self.alerts.get(k, 0.0) + v
        self.gauges.update(other.gauges)

    def to_json(self) -> dict:
        return {"start": self.start, "span_s": self.span_s,
                "cells": [{"tier": t, "class": c, "values": [round(float(x), 9) for x in v]}
                          for (t, c), v in sorted(self.cells.items())],
                "alerts": self.alerts, "gauges": {k: v for k, v in self.gauges.items() if math.isfinite(v)}}

    @classmethod
    def from_json(cls, d: dict) -> "Frame":
        cells = {(c["tier"], c["class"]): np.asarray(c["values"], dtype=float) for c in d["cells"]}
        if any(v.shape != (len(FIELDS),) for v in cells.values()):
            raise ValueError(f"a cell does not have the {len(FIELDS)} fields of history schema {SCHEMA_VERSION}")
        return cls(float(d["start"]), float(d["span_s"]), cells, dict(d.get("alerts", {})),
                   dict(d.get("gauges", {})))


def frame_from_samples(samples: Iterable[tuple[str, dict, float]], start: float, span_s: float) -> Frame:
    """A frame from (sample name, labels, value) triples: cumulative counters (a registry read) or their
    increases over a step (Prometheus `increase`), summed into the frame's fields."""
    f = Frame(start, span_s)

    def cell(labels: dict) -> np.ndarray:
        key = (labels.get("tier", ""), labels.get("class", ""))
        if key not in f.cells:
            f.cells[key] = np.zeros(len(FIELDS))
        return f.cells[key]

    for name, labels, value in samples:
        if not math.isfinite(value) and name not in _GAUGES:
            continue
        if name == "compress_requests_total":
            cell(labels)[IDX[status_field(labels.get("status", ""))]] += value
        elif name == "compress_cache_lookups_total":
            cell(labels)[IDX["cache_hits" if labels.get("result") == "hit" else "cache_misses"]] += value
        elif name == "compress_slo_requests_total":
            cell(labels)[IDX["slo_good" if labels.get("result") == "good" else "slo_slow"]] += value
        elif name in _PLAIN:
            cell(labels)[IDX[_PLAIN[name]]] += value
        elif name in _BUCKETS:
            cell(labels)[_BUCKETS[name] + LE.index(float(labels["le"]))] += value
        elif name == "compress_budget_alerts_total":
            f.alerts[labels.get("kind", "")] = f.alerts.get(labels.get("kind", ""), 0.0) + value
        elif name in _GAUGES:
            f.gauges[f"{name}:{labels.get(_GAUGES[name], '')}"] = value
        elif name == "compress_budget_window_seconds":
            f.gauges[name] = value
    return f


def read_registry(registry: CollectorRegistry) -> list[tuple[str, dict, float]]:
    return [(s.name, s.labels, s.value) for m in registry.collect() for s in m.samples]


class History:
    """Per-minute frames for `minutes` minutes and per-hour frames for `hours` hours, from `registry`."""

    def __init__(self, registry: CollectorRegistry, minutes: int = 24 * 60, hours: int = 15 * 24,
                 tick_s: float = 5.0, clock: Callable[[], float] = time.time, start_thread: bool = True):
        self.registry, self.clock, self.tick_s = registry, clock, tick_s
        self.minutes: deque[Frame] = deque(maxlen=minutes)
        self.hours: deque[Frame] = deque(maxlen=hours)
        self._lock = threading.Lock()
        self._prev: Frame | None = None  # the last cumulative read
        self._minute: Frame | None = None  # open
        self._hour: Frame | None = None  # open
        self.started = clock()
        self._stop = threading.Event()
        if start_thread:
            threading.Thread(target=_sample_loop, args=(weakref.ref(self), self._stop, tick_s), daemon=True,
                             name="compress-history").start()

    def close(self) -> None:
        self._stop.set()

    def tick(self) -> None:
        """Read the registry and add the growth since the last read into the current minute."""
        now = self.clock()
        cur = frame_from_samples(read_registry(self.registry), now, 0.0)
        with self._lock:
            prev, self._prev = self._prev, cur
            delta = Frame(now, 0.0, gauges=dict(cur.gauges))
            for k, v in cur.cells.items():
                d = v - prev.cells[k] if prev is not None and k in prev.cells else v
                if d.any():
                    delta.cells[k] = d
            for k, v in cur.alerts.items():
                d = v - (prev.alerts.get(k, 0.0) if prev is not None else 0.0)
                if d:
                    delta.alerts[k] = d
            self._roll(now)
            self._minute.add(delta)

    def _roll(self, now: float) -> None:
        start = now // 60 * 60
        if self._minute is not None and self._minute.start != start:
            self.minutes.append(self._minute)
            hour = self._minute.start // 3600 * 3600
            if self._hour is not None and self._hour.start != hour:
                self.hours.append(self._hour)
                self._hour = None
            if self._hour is None:
                self._hour = Frame(hour, 3600.0)
            self._hour.add(self._minute)
            self._minute = None
        if self._minute is None:
            self._minute = Frame(start, 60.0)

    def frames(self, start: float, end: float, step_s: float) -> list[Frame]:
        """Frames of `step_s` seconds (a multiple of 60; of 3600 when reading hours) covering [start, end),
        the last one possibly still open; from minutes when they reach back to `start`, else from hours."""
        self.tick()
        with self._lock:
            open_minute = [self._minute] if self._minute else []
            minutes = list(self.minutes) + open_minute
            # The open hour holds the closed minutes of this hour; the open minute is added on top.
            hours = list(self.hours) + ([self._hour] if self._hour else []) + open_minute
            dropped = len(self.minutes) == self.minutes.maxlen
            src = minutes if step_s < 3600 or not dropped or start >= minutes[0].start else hours
        step_s = max(60.0, step_s // 60 * 60)
        first = start // step_s * step_s
        out = [Frame(first + i * step_s, step_s) for i in range(max(1, math.ceil((end - first) / step_s)))]
        for f in src:
            i = int((f.start - first) // step_s)
            if 0 <= i < len(out):
                out[i].add(f)
        out[-1].span_s = max(1.0, min(step_s, end - out[-1].start))  # rates of the open step: over its elapsed part
        return out

    def to_json(self, start: float, end: float, step_s: float) -> dict:
        return {"kind": "compress-serve-history", "schema_version": SCHEMA_VERSION, "fields": list(FIELDS),
                "le": [b if math.isfinite(b) else "+Inf" for b in LE], "start": start, "end": end,
                "step_s": step_s, "frames": [f.to_json() for f in self.frames(start, end, step_s)]}


def _sample_loop(ref: "weakref.ref[History]", stop: threading.Event, tick_s: float) -> None:
    """Tick until stopped or until the History is garbage (an app that was dropped)."""
    while not stop.wait(tick_s):
        h = ref()
        if h is None:
            return
        h.tick()
        del h
