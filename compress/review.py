"""The weekly review: one self-contained HTML file with the dashboard's panels over a period, a table per
tier (requests, tokens, cost, p95, cache hit rate) and each figure's change from the previous period.

The numbers come either from a running `compress serve` (`GET /dashboard/history`, its bounded
in-memory history: minutes for a day, hours for 15 days) or from a Prometheus server that scrapes it
(`increase(...)` of the same series per step, via the HTTP API's query_range). Both become the same
frames (compress.serve.history), so one code path draws them. `compress report --serve URL` or
`compress report --prometheus URL` calls `write_review`.
"""

from __future__ import annotations

import html
import math
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

from compress.errors import CompressError
from compress.serve import panels as PN
from compress.serve.dashboard import summary_table
from compress.serve.history import SCHEMA_VERSION, Frame, frame_from_samples

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'7d', '24h', '30m', '90s', '2w' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise CompressError(f"not a duration: {text!r} (e.g. 7d, 24h, 30m)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def default_step(period_s: float) -> float:
    """About 168 points per period (hourly for a week), at least a minute, whole minutes."""
    return max(60.0, period_s // 168 // 60 * 60)


# ------------------------------------------------------------------------------------------ sources


def _get(url: str, params: dict, headers: dict | None = None) -> dict:
    try:
        r = httpx.get(url, params=params, headers=headers or {}, timeout=60)
    except httpx.HTTPError as e:
        raise CompressError(f"cannot reach {url}: {type(e).__name__}: {e}") from None
    if r.status_code == 401:
        raise CompressError(f"{url} refused the API key (401); pass --api-key or set COMPRESS_API_KEY")
    if r.status_code != 200:
        raise CompressError(f"{url} answered {r.status_code}: {r.text[:200]}")
    try:
        return r.json()
    except ValueError:
        raise CompressError(f"{url} did not answer JSON") from None


def frames_from_server(url: str, api_key: str | None, start: float, end: float, step_s: float) -> list[Frame]:
    data = _get(url.rstrip("/") + "/dashboard/history", {"start": start, "end": end, "step": step_s},
                {"Authorization": f"Bearer {api_key}"} if api_key else None)
    if data.get("kind") != "compress-serve-history" or data.get("schema_version") != SCHEMA_VERSION:
        raise CompressError(f"{url}: not a compress serve history of schema {SCHEMA_VERSION} "
                            f"(got kind {data.get('kind')!r}, schema {data.get('schema_version')!r})")
    return [Frame.from_json(f) for f in data["frames"]]


# (PromQL with STEP for the step's range, the sample name frame_from_samples knows it by)
_COUNTER_QUERIES = [
    ("sum by (tier, class, status) (increase(compress_requests_total[STEP]))", "compress_requests_total"),
    ("sum by (tier, class, result) (increase(compress_cache_lookups_total[STEP]))", "compress_cache_lookups_total"),
    ("sum by (tier, class, result) (increase(compress_slo_requests_total[STEP]))", "compress_slo_requests_total"),
    ("sum by (kind) (increase(compress_budget_alerts_total[STEP]))", "compress_budget_alerts_total"),
] + [(f"sum by (tier, class) (increase({n}[STEP]))", n) for n in (
    "compress_generation_tokens_total", "compress_prompt_tokens_total", "compress_fallbacks_total",
    "compress_cost_total", "compress_shed_requests_total", "compress_e2e_request_latency_seconds_sum",
    "compress_e2e_request_latency_seconds_count", "compress_time_to_first_token_seconds_sum",
    "compress_time_to_first_token_seconds_count")] + [
    (f"sum by (tier, class, le) (increase({n}[STEP]))", n) for n in (
        "compress_e2e_request_latency_seconds_bucket", "compress_time_to_first_token_seconds_bucket")]
_GAUGE_QUERIES = [("max by (class) (compress_slo_target_seconds)", "compress_slo_target_seconds"),
                  ("sum by (resource) (compress_budget_limit)", "compress_budget_limit"),
                  ("sum by (resource) (compress_budget_spent)", "compress_budget_spent"),
                  ("max(compress_budget_window_seconds)", "compress_budget_window_seconds")]


def frames_from_prometheus(url: str, start: float, end: float, step_s: float) -> list[Frame]:
    """Each point at t of `increase(x[step])` covers (t - step, t]: it becomes the frame starting at t - step."""
    api = url.rstrip("/") + "/api/v1/query_range"
    first = start // step_s * step_s
    times = [first + step_s * (i + 1) for i in range(max(1, math.ceil((end - first) / step_s)))]
    samples: dict[float, list] = {t: [] for t in times}
    for query, name in _COUNTER_QUERIES + _GAUGE_QUERIES:
        q = query.replace("STEP", f"{int(step_s)}s")
        data = _get(api, {"query": q, "start": times[0], "end": times[-1], "step": step_s})
        if data.get("status") != "success":
            raise CompressError(f"Prometheus refused {q!r}: {data.get('error')}")
        for series in data["data"]["result"]:
            labels = series["metric"]
            for t, v in series["values"]:
                key = min(times, key=lambda x: abs(x - float(t)))
                samples[key].append((name, labels, float(v)))
    return [frame_from_samples(samples[t], t - step_s, step_s) for t in times]


# ------------------------------------------------------------------------------------------ report


TABLE = (("requests", "requests", ""), ("tokens", "tokens", ""), ("cost", "cost", ""),
         ("e2e_p95", "e2e p95", "s"), ("hit_rate", "cache hit rate", "%"))


def _change(cur, prev) -> str:
    if cur is None or prev is None:
        return '<span class="muted">–</span>'
    if prev == 0:
        return '<span class="muted">new</span>' if cur else "0%"
    ch = (cur - prev) / abs(prev)
    return f'<span class="{"up" if ch > 0 else "down" if ch < 0 else ""}">{ch:+.1%}</span>'


def tier_table(cur: list[Frame], prev: list[Frame]) -> str:
    by_tier = lambda k: (k[0], "")  # noqa: E731
    now = {r["tier"]: r for r in PN.summary_rows(cur, by_tier)}
    before = {r["tier"]: r for r in PN.summary_rows(prev, by_tier)}
    head = "".join(f"<th>{h}</th><th>previous</th><th>change</th>" for _, h, _ in TABLE)
    rows = []
    for tier in sorted(set(now) | set(before)):
        zero = {"requests": 0.0, "tokens": 0.0, "cost": 0.0}  # a tier absent from a period served nothing there
        a, b = now.get(tier, zero), before.get(tier, zero)
        cells = "".join(f"<td>{PN.fmt(a.get(k), u)}</td><td class=muted>{PN.fmt(b.get(k), u)}</td>"
                        f"<td>{_change(a.get(k), b.get(k))}</td>" for k, _, u in TABLE)
        rows.append(f"<tr><td>{html.escape(tier)}</td>{cells}</tr>")
    if not rows:
        return '<p class="empty">no requests in either period</p>'
    return f'<table class="tiers"><tr><th>tier</th>{head}</tr>{"".join(rows)}</table>'


def render_review(cur: list[Frame], prev: list[Frame], source: str, start: float, end: float, title: str) -> str:
    def ts(t: float) -> str:
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    period = end - start
    charts = "".join(PN.svg_chart(s, width=600) for s in PN.all_series(cur))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{PN.CSS}</style></head><body><h1>{html.escape(title)}</h1>'
            f'<p class="muted">{ts(start)} → {ts(end)}, compared with the {period / 3600:g} h before '
            f'({ts(start - period)} → {ts(start)}) · source: {html.escape(source)} · step '
            f'{cur[0].span_s / 60 if cur else 0:g} min · written {ts(time.time())}</p>'
            f'<h2>Per tier, with the change from the previous period</h2>{tier_table(cur, prev)}'
            f'<h2>Per tier and class</h2>{summary_table(PN.summary_rows(cur))}'
            f'<h2>Panels</h2><div class="grid">{charts}</div></body></html>')


def write_review(output: str | Path, *, serve_url: str | None = None, prometheus_url: str | None = None,
                 api_key: str | None = None, period_s: float = 7 * 86400, end: float | None = None,
                 step_s: float | None = None, title: str = "compress weekly review") -> Path:
    """Read this period and the one before from the server or Prometheus; write one HTML file."""
    if (serve_url is None) == (prometheus_url is None):
        raise CompressError("give exactly one source: --serve URL (the server's history) or --prometheus URL")
    end = time.time() if end is None else end
    step_s = default_step(period_s) if step_s is None else step_s
    if step_s < 60 or period_s / step_s > 2000:
        raise CompressError("--step must be at least 60 s and at most 2000 steps per period")
    start = end - period_s

    def load(a: float, b: float) -> list[Frame]:
        if serve_url is not None:
            return frames_from_server(serve_url, api_key, a, b, step_s)
        return frames_from_prometheus(prometheus_url, a, b, step_s)

    cur, prev = load(start, end), load(start - period_s, start)
    source = f"compress serve {serve_url}" if serve_url else f"Prometheus {prometheus_url}"
    from compress.evaluate.results import write_text_atomic

    return write_text_atomic(output, render_review(cur, prev, source, start, end, title))  # never half-written
