"""The dashboard's panels as numbers, and as server-rendered SVG: shared by /dashboard and the weekly review.

Each panel maps history frames (compress.serve.history) to one line per (tier, class): requests/s,
p50/p95 end-to-end latency and TTFT (interpolated in the histogram buckets exactly as Prometheus'
`histogram_quantile` does) against the SLO target, generated tokens/s, cache hit rate, cost per
request and per hour, budget spent and burn rate, sheds and fallbacks, and each tier's share of the
requests (the routing split). `svg_chart` draws a panel as inline SVG: no script, no network.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from compress.serve.history import E2E0, IDX, LE, TTFT0, Frame

Value = float | None
Cell = np.ndarray
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2")


def requests(c: Cell) -> float:
    return float(c[IDX["ok"]] + c[IDX["rejected"]] + c[IDX["errors"]] + c[IDX["other"]])


def quantile(c: Cell, q: float, first: int) -> Value:
    """Prometheus' histogram_quantile over the cumulative buckets starting at index `first`."""
    cum = c[first:first + len(LE)]
    total = cum[-1]
    if total <= 0:
        return None
    rank = q * total
    i = int(np.searchsorted(cum, rank, side="left"))
    if i >= len(LE) - 1:
        return LE[-2]  # in +Inf: the highest finite bound, as Prometheus answers
    lo, hi = (0.0, LE[0]) if i == 0 else (LE[i - 1], LE[i])
    below = 0.0 if i == 0 else cum[i - 1]
    inside = cum[i] - below
    return hi if inside <= 0 else lo + (hi - lo) * (rank - below) / inside


def _ratio(a: float, b: float) -> Value:
    return a / b if b > 0 else None


@dataclass(frozen=True)
class Panel:
    key: str
    title: str
    unit: str
    value: Callable[[Cell, float], Value]  # (cell, span_s) -> value
    slo: bool = False  # draw the SLO targets


PANELS = (
    Panel("rps", "Requests/s", "req/s", lambda c, s: requests(c) / s),
    Panel("e2e_p95", "End-to-end latency p95", "s", lambda c, s: quantile(c, 0.95, E2E0), slo=True),
    Panel("e2e_p50", "End-to-end latency p50", "s", lambda c, s: quantile(c, 0.50, E2E0), slo=True),
    Panel("ttft_p95", "Time to first token p95", "s", lambda c, s: quantile(c, 0.95, TTFT0), slo=True),
    Panel("ttft_p50", "Time to first token p50", "s", lambda c, s: quantile(c, 0.50, TTFT0), slo=True),
    Panel("tok_s", "Generated tokens/s", "tok/s", lambda c, s: c[IDX["gen_tokens"]] / s),
    Panel("hit_rate", "Cache hit rate", "", lambda c, s: _ratio(c[IDX["cache_hits"]],
                                                                c[IDX["cache_hits"]] + c[IDX["cache_misses"]])),
    Panel("cost_req", "Cost per answered request", "", lambda c, s: _ratio(c[IDX["cost"]], c[IDX["ok"]])),
    Panel("cost_h", "Cost per hour", "/h", lambda c, s: c[IDX["cost"]] / s * 3600),
    Panel("shed", "Shed requests (SLO) per minute", "/min", lambda c, s: c[IDX["shed"]] / s * 60),
    Panel("fallbacks", "Fallbacks to the next tier per minute", "/min", lambda c, s: c[IDX["fallbacks"]] / s * 60),
)


@dataclass
class Series:
    title: str
    unit: str
    times: list[float]
    lines: dict[tuple[str, str], list[Value]] = field(default_factory=dict)  # (tier, class) or (name, "")
    hlines: dict[str, float] = field(default_factory=dict)  # label -> y (SLO targets)


def keys_of(frames: list[Frame]) -> list[tuple[str, str]]:
    return sorted({k for f in frames for k in f.cells})


def slo_targets(frames: list[Frame]) -> dict[str, float]:
    out: dict[str, float] = {}
    for f in frames:
        for k, v in f.gauges.items():
            if k.startswith("compress_slo_target_seconds:") and math.isfinite(v):
                out[k.partition(":")[2]] = v
    return out


def panel_series(panel: Panel, frames: list[Frame]) -> Series:
    s = Series(panel.title, panel.unit, [f.start for f in frames])
    for key in keys_of(frames):
        vals = [panel.value(f.cells[key], f.span_s) if key in f.cells else None for f in frames]
        if panel.key in ("rps", "tok_s", "cost_h", "shed", "fallbacks"):
            vals = [0.0 if v is None else v for v in vals]  # a quiet minute is a zero, not a gap
        s.lines[key] = vals
    if panel.slo:
        s.hlines = {f"SLO {c}": t for c, t in slo_targets(frames).items()}
    return s


def routing_split(frames: list[Frame]) -> Series:
    """Each tier's share of the requests per class (auto-routed and named alike)."""
    s = Series("Routing split: share of each class's requests", "", [f.start for f in frames])
    for key in keys_of(frames):
        tier, cls = key
        vals = []
        for f in frames:
            total = sum(requests(v) for (t, c), v in f.cells.items() if c == cls)
            vals.append(requests(f.cells[key]) / total if key in f.cells and total > 0 else None)
        s.lines[key] = vals
    return s


def budget_series(frames: list[Frame]) -> list[Series]:
    """Budget spent (fraction of each limit, at the frame's end) and burn rate (spend rate / (limit /
    window): 1 = on course to spend exactly the budget by the window's end)."""
    window = next((f.gauges["compress_budget_window_seconds"] for f in reversed(frames)
                   if "compress_budget_window_seconds" in f.gauges), None)
    spent = Series("Budget spent in its window", "of limit", [f.start for f in frames])
    burn = Series("Budget burn rate", "x", [f.start for f in frames], hlines={"burn 1": 1.0})
    for res in ("tokens", "cost"):
        limits = [f.gauges.get(f"compress_budget_limit:{res}") for f in frames]
        if window is None or not any(limits):
            continue
        spent.lines[(res, "")] = [_ratio(f.gauges.get(f"compress_budget_spent:{res}", math.nan), lim or 0)
                                  if f"compress_budget_spent:{res}" in f.gauges else None
                                  for f, lim in zip(frames, limits)]
        used = [sum(_resource(v, res) for v in f.cells.values()) for f in frames]
        burn.lines[(res, "")] = [_ratio(u / f.span_s, (lim or 0) / window) for f, u, lim in zip(frames, used, limits)]
    return [spent, burn] if spent.lines else []


def _resource(c: Cell, res: str) -> float:
    return float(c[IDX["cost"]]) if res == "cost" else float(c[IDX["prompt_tokens"]] + c[IDX["gen_tokens"]])


def all_series(frames: list[Frame]) -> list[Series]:
    return [panel_series(p, frames) for p in PANELS] + [routing_split(frames)] + budget_series(frames)


def merged(frames: list[Frame]) -> Frame:
    out = Frame(frames[0].start if frames else 0.0, sum(f.span_s for f in frames))
    for f in frames:
        out.add(f)
    return out


def summary_rows(frames: list[Frame], by: Callable[[tuple[str, str]], tuple[str, str]] = lambda k: k) -> list[dict]:
    """One row per (tier, class) (or per `by(key)`, e.g. per tier) over all `frames` together."""
    total = merged(frames)
    groups: dict[tuple[str, str], np.ndarray] = {}
    for k, v in total.cells.items():
        g = by(k)
        groups[g] = groups.get(g, 0) + v
    per_class: dict[str, float] = {}
    for (_, cls), v in groups.items():
        per_class[cls] = per_class.get(cls, 0.0) + requests(v)
    span = max(total.span_s, 1e-9)
    rows = []
    for (tier, cls), c in sorted(groups.items()):
        rows.append({"tier": tier, "class": cls, "requests": requests(c), "req_s": requests(c) / span,
                     "share": _ratio(requests(c), per_class[cls]), "errors": float(c[IDX["errors"]]),
                     "rejected": float(c[IDX["rejected"]]),
                     "tokens": float(c[IDX["prompt_tokens"]] + c[IDX["gen_tokens"]]),
                     "gen_tokens": float(c[IDX["gen_tokens"]]), "tok_s": float(c[IDX["gen_tokens"]]) / span,
                     "e2e_p50": quantile(c, 0.5, E2E0), "e2e_p95": quantile(c, 0.95, E2E0),
                     "ttft_p50": quantile(c, 0.5, TTFT0), "ttft_p95": quantile(c, 0.95, TTFT0),
                     "hit_rate": _ratio(c[IDX["cache_hits"]], c[IDX["cache_hits"]] + c[IDX["cache_misses"]]),
                     "cost": float(c[IDX["cost"]]), "cost_req": _ratio(c[IDX["cost"]], c[IDX["ok"]]),
                     "cost_h": float(c[IDX["cost"]]) / span * 3600, "shed": float(c[IDX["shed"]]),
                     "fallbacks": float(c[IDX["fallbacks"]])})
    return rows


# ---------------------------------------------------------------------------------------------- SVG


def fmt(v: Value, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if unit == "%":
        return f"{100 * v:.1f}%"
    a = abs(v)
    s = f"{v:.3g}" if a >= 0.01 or a == 0 else f"{v:.2e}"
    return f"{s} {unit}".strip()


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def svg_chart(s: Series, width: int = 520, height: int = 190) -> str:
    """A line chart: one polyline per line (colour per tier, dashed for the batch class), dotted
    horizontal reference lines, three y ticks, start/middle/end times."""
    left, right, top, bottom = 52, 8, 8, 22
    pw, ph = width - left - right, height - top - bottom
    ys = [v for vals in s.lines.values() for v in vals if v is not None and math.isfinite(v)]
    ys += list(s.hlines.values())
    ymax = (max(ys, default=0.0) or 1.0) * 1.1
    t0, t1 = (s.times[0], s.times[-1]) if s.times else (0.0, 1.0)
    span = (t1 - t0) or 1.0

    def x(t: float) -> float:
        return left + pw * (t - t0) / span

    def y(v: float) -> float:
        return top + ph * (1 - v / ymax)

    out = [f'<svg class="chart" role="img" aria-label="{html.escape(s.title)}" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ddd"/>']
    for frac in (0, 0.5, 1):
        v = ymax / 1.1 * frac
        out.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end" class="tick">{fmt(v)}</text>')
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
    for frac, anchor in ((0, "start"), (0.5, "middle"), (1, "end")):
        t = t0 + span * frac
        label = datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M" if span <= 86400 else "%m-%d %H:%M")
        out.append(f'<text x="{x(t):.1f}" y="{height - 6}" text-anchor="{anchor}" class="tick">{label}</text>')
    for i, (label, v) in enumerate(sorted(s.hlines.items())):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#555" '
                   f'stroke-dasharray="2 3"><title>{html.escape(label)}: {fmt(v)}</title></line>')
    tiers = sorted({k[0] for k in s.lines})
    for key, vals in s.lines.items():
        color = _color(tiers.index(key[0]))
        dash = ' stroke-dasharray="6 3"' if key[1] == "batch" else ""
        for run in _runs(s.times, vals):
            pts = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in run)
            if len(run) == 1:
                out.append(f'<circle cx="{x(run[0][0]):.1f}" cy="{y(run[0][1]):.1f}" r="2" fill="{color}"/>')
            else:
                out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} points="{pts}"/>')
    out.append("</svg>")
    legend = "".join(f'<span class="key"><i style="border-color:{_color(tiers.index(k[0]))};'
                     f'border-style:{"dashed" if k[1] == "batch" else "solid"}"></i>'
                     f'{html.escape(" · ".join(p for p in k if p))}</span>' for k in s.lines)
    legend += "".join(f'<span class="key"><i style="border-color:#555;border-style:dotted"></i>'
                      f'{html.escape(label)} {fmt(v)}</span>' for label, v in sorted(s.hlines.items()))
    empty = "" if s.lines else '<p class="empty">no data in this range</p>'
    unit = f' <small>({html.escape(s.unit)})</small>' if s.unit else ""
    return (f'<figure class="panel"><figcaption>{html.escape(s.title)}{unit}</figcaption>{"".join(out)}'
            f'<div class="legend">{legend}</div>{empty}</figure>')


def _runs(times: list[float], vals: list[Value]) -> list[list[tuple[float, float]]]:
    runs, cur = [], []
    for t, v in zip(times, vals):
        if v is None or not math.isfinite(v):
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append((t, v))
    if cur:
        runs.append(cur)
    return runs


CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:18px 0 6px}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.panel{margin:0;border:1px solid #e3e3e3;border-radius:6px;padding:6px 8px;background:#fff}
.panel figcaption{font-weight:600;margin-bottom:2px} .tick{font-size:10px;fill:#666}
.legend{font-size:11px;max-width:520px} .key{margin-right:10px;white-space:nowrap}
.key i{display:inline-block;width:16px;height:0;border-top-width:2px;margin-right:3px;vertical-align:middle}
.empty{color:#999;font-size:12px;margin:0} table{border-collapse:collapse;font-size:12px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:right} th{background:#f3f3f3}
td:first-child,td:nth-child(2),th:first-child{text-align:left} .muted{color:#777}
.up{color:#a33} .down{color:#272} nav a{margin-right:12px}
"""
