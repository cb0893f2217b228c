"""The policy steps of the request pipeline (pipeline.py), in order: `Auth`, `Limits` (rate limit and
budget), `Route`, `SLOAdmission`, `Cache`. Dispatch (the tiers themselves) is in dispatch.py.

Each step takes what it needs in its constructor and is called with the request's context; each
is tested alone in tests/test_serve_api_steps.py.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from starlette.responses import JSONResponse, Response, StreamingResponse

from compress.serve import cache as cache_mod
from compress.serve import sse
from compress.serve.sequence import CLASSES
from compress.serve.budget import BudgetTracker, RateLimiter
from compress.serve.cache import ResponseCache
from compress.serve.metrics import ServeMetrics
from compress.serve.pipeline import RequestContext
from compress.serve.protocol import APIError
from compress.serve.router import Router
from compress.serve.slo import SLOController

PRIORITY = {c: i for i, c in enumerate(CLASSES)}


def bearer_key(headers) -> str | None:
    return headers.get("authorization", "").partition(" ")[2].strip() or None


class Auth:
    """401 unless the request carries one of the server's API keys (no keys: everyone may call).
    Also sets the request's traffic class and its API key (the budget and cache scope use it)."""

    def __init__(self, api_keys: list[str]):
        self.api_keys = set(api_keys)

    def check(self, headers) -> None:
        if not self.api_keys:
            return
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() not in self.api_keys:
            raise APIError(401, "missing or invalid API key (send Authorization: Bearer KEY)",
                           type="authentication_error", code="invalid_api_key")

    async def __call__(self, ctx: RequestContext) -> None:
        self.check(ctx.http.headers)
        ctx.api_key = bearer_key(ctx.http.headers)
        ctx.cls = priority_class(ctx.req.priority, ctx.http.headers.get("x-compress-priority"))


def priority_class(value, header: str | None) -> str:
    """`priority` field ("interactive"/"batch", or vLLM's integer: 0 or less = interactive) or the
    `x-compress-priority` header; interactive by default."""
    if value is None:
        value = header
    if value is None:
        return "interactive"
    if isinstance(value, str) and value.lower() in PRIORITY:
        return value.lower()
    try:
        return "interactive" if int(value) <= 0 else "batch"
    except (TypeError, ValueError):
        raise APIError(400, "priority must be 'interactive', 'batch' or an integer", param="priority") from None


class Limits:
    """Per-key rate limit (429 rate_limited) and hard budgets (429 budget_exceeded), with Retry-After."""

    def __init__(self, limiter: RateLimiter | None, budget: BudgetTracker | None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.limiter, self.budget, self.clock, self.wall = limiter, budget, clock, wall

    async def __call__(self, ctx: RequestContext) -> None:
        if self.limiter is not None:
            wait = self.limiter.admit(ctx.api_key, self.clock())
            if wait is not None:
                raise APIError(429, f"rate limit of {self.limiter.per_minute} requests per minute reached",
                               type="rate_limit_error", code="rate_limited",
                               headers={"Retry-After": str(max(1, math.ceil(wait)))})
        if self.budget is not None:
            now = self.wall()
            why = self.budget.refusal(ctx.api_key, now)
            if why:
                window = self.budget.config.window_s
                retry = int(window - (now - self.budget.start) % window) + 1
                raise APIError(429, f"budget exceeded: {why}", type="rate_limit_error", code="budget_exceeded",
                               headers={"Retry-After": str(retry)})


class Route:
    """Model id -> the tiers to try (router.py), with the SLO controller's tuned thresholds."""

    def __init__(self, router: Router, slo: SLOController | None, floor: float, keep: float,
                 clock: Callable[[], float] = time.monotonic):
        self.router, self.slo, self.floor, self.keep, self.clock = router, slo, floor, keep, clock

    async def __call__(self, ctx: RequestContext) -> None:
        if self.slo is not None:
            now = self.clock()
            ctx.floor, ctx.keep = self.slo.route_floor(self.floor, now), self.slo.route_floor(self.keep, now)
        req = ctx.req
        text = "\n".join(m.text() for m in req.messages) if ctx.chat else prompt_text(req.prompt)
        ctx.decision = self.router.route(req.model, text, req.requested_tokens(), floor=ctx.floor, keep=ctx.keep)
        ctx.tier = ctx.decision.tiers[0].name


def prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return " ".join(p for p in prompt if isinstance(p, str)) if prompt else ""


class SLOAdmission:
    """Publishes the SLO state, tunes the engines' batching wait, and sheds load (503 slo_shed)."""

    def __init__(self, slo: SLOController | None, metrics: ServeMetrics, engines: Callable[[], list],
                 max_wait_s: float, clock: Callable[[], float] = time.monotonic):
        self.slo, self.metrics, self.engines, self.max_wait_s, self.clock = slo, metrics, engines, max_wait_s, clock

    async def __call__(self, ctx: RequestContext) -> None:
        slo = self.slo
        if slo is None:
            return
        now = self.clock()
        for c in CLASSES:
            self.metrics.slo_state.labels(c).set(int(slo.state(now, c)))
            p95 = slo.p95(c, now)
            self.metrics.slo_p95.labels(c).set(float("nan") if p95 is None else p95)
        wait = self.max_wait_s * slo.wait_scale(now)
        for eng in self.engines():
            eng.set_max_wait(wait)
        if not slo.admit(ctx.cls, now):
            ctx.shed = True
            self.metrics.shed.labels(ctx.tier, ctx.cls).inc()
            target = slo.config.targets.get("interactive")
            raise APIError(503, f"shedding {ctx.cls} load to keep interactive p95 under {target:g} s; retry later",
                           type="server_error", code="slo_shed", headers={"Retry-After": "2"})


class Cache:
    """The response cache: sets the request's policy and scope, answers a hit on the first-choice tier,
    and is asked again by dispatch for fallback tiers (`lookup`) and to store answers (`store`)."""

    def __init__(self, cache: ResponseCache, default_ttl_s: float, metrics: ServeMetrics):
        self.cache, self.default_ttl_s, self.metrics = cache, default_ttl_s, metrics

    async def __call__(self, ctx: RequestContext) -> Response | None:
        h = ctx.http.headers
        ctx.policy = cache_mod.policy(h.get("cache-control"), self.default_ttl_s,
                                      deterministic=deterministic(ctx.req) and self.default_ttl_s > 0)
        ctx.scope = cache_mod.scope(ctx.req.user, ctx.api_key,
                                    h.get("x-compress-cache-scope", "").lower() == cache_mod.SHARED)
        return self.lookup(ctx, ctx.decision.tiers[0].name)

    def _key(self, ctx: RequestContext, tier: str) -> str:
        return cache_mod.cache_key(ctx.scope, tier, ctx.req.model_dump(exclude_unset=True))

    def lookup(self, ctx: RequestContext, tier: str) -> Response | None:
        ctx.headers = {"x-compress-tier": tier, "x-compress-class": ctx.cls}
        pol = ctx.policy
        if not pol.read:
            if pol.write:
                ctx.headers["x-compress-cache"] = "miss"
            return None
        hit = self.cache.get(self._key(ctx, tier), pol.max_age_s)
        self.metrics.cache.labels(tier, ctx.cls, "hit" if hit else "miss").inc()
        if hit is None:
            ctx.headers["x-compress-cache"] = "miss"
            return None
        ctx.tier, ctx.cache_hit, ctx.cost = tier, True, 0.0
        hit["model"] = ctx.req.model
        use = hit.get("usage") or {}
        ctx.prompt_tokens, ctx.completion_tokens = use.get("prompt_tokens", 0), use.get("completion_tokens", 0)
        headers = {**ctx.headers, "x-compress-cache": "hit", "x-compress-cost": "0"}
        if ctx.req.stream:  # the stored answer, replayed as server-sent events
            return StreamingResponse(sse.replay(hit, ctx.chat, sse.include_usage(ctx.req)), headers=headers,
                                     media_type="text/event-stream")
        return JSONResponse(hit, headers=headers)

    def store(self, ctx: RequestContext, tier: str, answer: dict) -> None:
        if ctx.policy is not None and ctx.policy.write:
            self.cache.put(self._key(ctx, tier), answer, ctx.policy.ttl_s)


def deterministic(req) -> bool:
    """Only greedy answers are cached: the same request gets the same tokens (and logprobs)."""
    return req.temperature == 0
