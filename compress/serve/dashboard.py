"""`GET /dashboard` (one self-contained HTML page, server-rendered SVG, no script or network) and
`GET /dashboard/history` (the history as JSON, which `compress report --serve URL` reads).

Both are behind the server's API keys when it has any: `Authorization: Bearer KEY`, or HTTP Basic
with the key as the password, so that a browser asks for it (401 with `WWW-Authenticate: Basic`).
The page shows the last hour (`?range=hour`, one point a minute) or the last day (`?range=day`, one
point per 10 minutes) and reloads itself every 30 s.
"""

from __future__ import annotations

import base64
import html
import time
from datetime import datetime, timezone

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from compress.serve import panels as PN
from compress.serve.history import History
from compress.serve.protocol import APIError

RANGES = {"hour": (3600, 60), "day": (86400, 600)}  # range -> (seconds, step)
MAX_POINTS = 2000  # per /dashboard/history answer


def key_of(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return None


def router(history: History, api_keys: list[str], title: str = "compress serve") -> APIRouter:
    r = APIRouter()

    def check(request: Request) -> None:
        if api_keys and key_of(request) not in api_keys:
            raise APIError(401, "missing or invalid API key (send Authorization: Bearer KEY, or the key as the "
                           "Basic auth password)", type="authentication_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": 'Basic realm="compress dashboard"'})

    @r.get("/dashboard", response_class=HTMLResponse)
    async def dashboard(request: Request, range: str = "hour"):  # noqa: A002 - the query parameter's name
        check(request)
        if range not in RANGES:
            raise APIError(400, f"range must be one of {', '.join(RANGES)}", param="range")
        span, step = RANGES[range]
        now = time.time()
        frames = history.frames(now - span + step, now, step)
        return HTMLResponse(render_page(frames, f"{title}: last {range}", range, now))

    @r.get("/dashboard/history")
    async def history_json(request: Request, start: float | None = None, end: float | None = None,
                           step: float = 3600):
        check(request)
        now = time.time()
        end = now if end is None else end
        start = end - 7 * 86400 if start is None else start
        if not (start < end and step >= 60 and (end - start) / step <= MAX_POINTS):
            raise APIError(400, f"need start < end, step >= 60 s and at most {MAX_POINTS} steps", param="step")
        return JSONResponse(history.to_json(start, end, step))

    return r


def render_page(frames, heading: str, current: str, now: float) -> str:
    nav = " ".join(f'<a href="?range={r}"{" aria-current=page" if r == current else ""}>last {r}</a>'
                   for r in RANGES)
    when = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    charts = "".join(PN.svg_chart(s) for s in PN.all_series(frames))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="30">'
            f'<title>{html.escape(heading)}</title><style>{PN.CSS}</style></head><body>'
            f'<h1>{html.escape(heading)}</h1><p class="muted">{when} · lines per tier (colour) and class '
            f'(solid interactive, dashed batch) · percentiles from the latency histograms, as Prometheus '
            f'computes them</p><nav>{nav}</nav>'
            f'<h2>Per tier and class</h2>{summary_table(PN.summary_rows(frames))}'
            f'<h2>Panels</h2><div class="grid">{charts}</div></body></html>')


COLUMNS = (("requests", "requests", ""), ("req_s", "req/s", ""), ("share", "share of class", "%"),
           ("errors", "5xx", ""), ("rejected", "429", ""), ("e2e_p50", "e2e p50", "s"), ("e2e_p95", "e2e p95", "s"),
           ("ttft_p50", "TTFT p50", "s"), ("ttft_p95", "TTFT p95", "s"), ("tok_s", "gen tok/s", ""),
           ("hit_rate", "cache hits", "%"), ("cost_req", "cost/request", ""), ("cost_h", "cost/hour", ""),
           ("shed", "shed", ""), ("fallbacks", "fallbacks", ""))


def summary_table(rows: list[dict]) -> str:
    if not rows:
        return '<p class="empty">no requests in this range</p>'
    head = "".join(f"<th>{h}</th>" for _, h, _ in COLUMNS)
    body = "".join(f'<tr><td>{html.escape(r["tier"])}</td><td>{html.escape(r["class"])}</td>'
                   + "".join(f"<td>{PN.fmt(r[k], u)}</td>" for k, _, u in COLUMNS) + "</tr>" for r in rows)
    return f'<table class="summary"><tr><th>tier</th><th>class</th>{head}</tr>{body}</table>'
