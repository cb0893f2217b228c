"""The request pipeline: one `RequestContext` per request, passed through a list of small steps.

    auth -> limits and budget -> route -> SLO admission -> cache -> dispatch

(steps.py and dispatch.py hold them). Each step is an object with one method,
`async __call__(ctx) -> Response | None`: it reads and fills the context, and either returns None
(go on) or a response (the request is answered: a cache hit, a generated answer), or raises
`APIError` (a 4xx/5xx with an OpenAI-style body). Routing comes before SLO admission so that a shed
request is counted against the tier it would have gone to; the SLO controller's tuned thresholds
are read by the route step.

Every request ends exactly once, in `RequestContext.close(status)`: that is where
`compress_requests_total` (every status, 4xx and 5xx included), the end-to-end latency and the
SLO controller's sample are recorded, and where the **on-request-finished observers** are called.

Observers: `Pipeline.observers` is a list of callables `fn(done: Finished) -> None`; each gets one
`Finished` record per request (tier, class, status, latency, time to first token, tokens, cost,
cache hit, shed, the tiers that failed before the answering one). They run on the event loop, so
they must be quick (append to a buffer); an observer that raises is logged and skipped. The
dashboard's per-minute history subscribes with `app.state.pipeline.observers.append(fn)`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from starlette.requests import Request
from starlette.responses import Response

from compress.serve.protocol import APIError

log = logging.getLogger("compress.serve")
NO_TIER = "none"  # the tier label of a request refused before it was routed


@dataclass(frozen=True)
class Finished:
    """What the observers get when a request ends."""
    tier: str  # the tier that answered (or was chosen); "none" before routing
    cls: str  # traffic class: interactive | batch
    status: int  # HTTP status (499: the client left)
    latency_s: float  # arrival to the end of the answer
    ttft_s: float | None  # arrival to the first token (None: no token generated here)
    prompt_tokens: int
    completion_tokens: int
    cost: float | None  # manifest currency; None: unknown
    cache_hit: bool
    shed: bool  # refused by the SLO controller
    fallbacks: tuple[str, ...]  # tiers that failed (retryable) before the answering one


@dataclass
class RequestContext:
    """One request's state as it moves through the pipeline."""
    http: Request
    req: Any  # protocol.CompletionRequest | protocol.ChatRequest
    chat: bool
    start: float = field(default_factory=time.monotonic)
    cls: str = "interactive"
    api_key: str | None = None
    floor: float | None = None  # routing thresholds tuned by the SLO controller (None: defaults)
    keep: float | None = None
    decision: Any = None  # router.Decision
    policy: Any = None  # cache.Policy
    scope: str | None = None  # cache scope
    tier: str = NO_TIER
    headers: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    cost: float | None = None
    cache_hit: bool = False
    shed: bool = False
    fallbacks: list[str] = field(default_factory=list)
    streaming: bool = False  # the response is a stream that closes the context itself
    closed: bool = False
    on_close: Callable[["RequestContext", int], None] | None = None

    def close(self, status: int) -> None:
        """End the request (idempotent): metrics, SLO sample and observers, through the pipeline."""
        if self.closed:
            return
        self.closed = True
        if self.on_close is not None:
            self.on_close(self, status)

    def first_token(self) -> None:
        if self.ttft_s is None:
            self.ttft_s = time.monotonic() - self.start


class Step(Protocol):
    async def __call__(self, ctx: RequestContext) -> Response | None: ...


class Pipeline:
    def __init__(self, steps: list[Step], on_close: Callable[[RequestContext, int], None]):
        self.steps = steps
        self.observers: list[Callable[[Finished], None]] = []
        self._on_close = on_close

    async def run(self, ctx: RequestContext) -> Response:
        ctx.on_close = self.close
        try:
            for step in self.steps:
                resp = await step(ctx)
                if resp is not None:
                    break
            else:
                raise AssertionError("the last step (dispatch) always answers or raises")
        except APIError as e:
            ctx.close(e.status)
            raise
        except Exception:
            ctx.close(500)
            raise
        if not ctx.streaming:
            ctx.close(resp.status_code)
        return resp

    def close(self, ctx: RequestContext, status: int) -> None:
        """Record a finished request (called once per request, through RequestContext.close)."""
        self._on_close(ctx, status)
        done = Finished(ctx.tier, ctx.cls, status, time.monotonic() - ctx.start, ctx.ttft_s, ctx.prompt_tokens,
                        ctx.completion_tokens, ctx.cost, ctx.cache_hit, ctx.shed, tuple(ctx.fallbacks))
        for fn in list(self.observers):
            try:
                fn(done)
            except Exception:  # noqa: BLE001 - an observer must never fail a request
                log.exception("request observer %r failed", fn)

