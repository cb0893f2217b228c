"""The last pipeline step: send the request to its tiers in order (the router's first choice, then
the fallbacks) until one answers. A tier that answers 429/500/502/503 passes the request on to the
next one (counted in `compress_fallbacks_total`); the last tier's answer or error is the response.

Local tiers answer through local.py; remote tiers are proxied (remote.py): the client's body is
forwarded as sent, a non-streaming answer is costed and cached, a stream is relayed as it comes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from starlette.responses import JSONResponse, Response, StreamingResponse

from compress.serve.accounting import Accounts
from compress.serve.local import LocalAnswer, ShutdownGate
from compress.serve.metrics import ServeMetrics
from compress.serve.pipeline import RequestContext
from compress.serve.protocol import APIError
from compress.serve.remote import RemoteTier
from compress.serve.steps import Cache

log = logging.getLogger("compress.serve")
RETRYABLE = {429, 500, 502, 503}
OURS = ("priority",)  # request fields of ours, not OpenAI's: not forwarded to a remote tier


@dataclass
class Tiers:
    """The serving tiers, filled at startup: local engines and remote proxies, by tier name."""
    engines: dict = field(default_factory=dict)
    remotes: dict[str, RemoteTier] = field(default_factory=dict)


class Dispatch:
    def __init__(self, tiers: Tiers, cache: Cache, accounts: Accounts, metrics: ServeMetrics, gate: ShutdownGate):
        self.tiers, self.cache, self.accounts, self.metrics, self.gate = tiers, cache, accounts, metrics, gate

    async def __call__(self, ctx: RequestContext) -> Response:
        chosen = ctx.decision.tiers
        if ctx.decision.difficulty is not None:
            log.info("route %s: %s", ctx.req.model, ctx.decision.describe())
        for i, tier in enumerate(chosen):
            last = i + 1 == len(chosen)
            if i > 0:
                hit = self.cache.lookup(ctx, tier.name)
                if hit is not None:
                    return hit
            ctx.tier = tier.name
            try:
                if tier.name in self.tiers.remotes:
                    status, resp = await self._proxy(ctx, self.tiers.remotes[tier.name])
                    if status in RETRYABLE and not last:
                        raise APIError(status, "remote tier failed")
                    return resp
                return await self._local(ctx, tier)
            except APIError as e:
                if e.status in RETRYABLE and not last:
                    self.metrics.fallbacks.labels(tier.name, ctx.cls, str(e.status)).inc()
                    ctx.fallbacks.append(tier.name)
                    log.info("tier %s answered %d; falling back to %s", tier.name, e.status, chosen[i + 1].name)
                    continue
                raise
        raise AssertionError("unreachable: the last tier either answers or raises")

    async def _local(self, ctx: RequestContext, tier) -> Response:
        answer = LocalAnswer(ctx, self.tiers.engines[tier.name], tier, self.gate, self.metrics,
                             self.accounts.charge, lambda body: self.cache.store(ctx, tier.name, body))
        return await answer.respond()

    async def _proxy(self, ctx: RequestContext, remote: RemoteTier) -> tuple[int, Response]:
        """(status, response) from a remote tier. Streams are relayed as they come (not parsed:
        neither cached nor costed)."""
        path = "/chat/completions" if ctx.chat else "/completions"
        body = {k: v for k, v in ctx.req.model_dump(exclude_unset=True).items() if k not in OURS}
        headers = ctx.headers
        if ctx.req.stream:
            status, result = await remote.stream(path, body)
            if status != 200:
                return status, JSONResponse(result, status_code=status, headers=headers)
            ctx.streaming = True

            async def relay():
                code = 499
                try:
                    async for part in result:
                        yield part
                    code = 200
                finally:
                    ctx.close(code)

            return status, StreamingResponse(relay(), media_type="text/event-stream", headers=headers)
        status, data = await remote.request(path, body)
        if status != 200:
            return status, JSONResponse(data, status_code=status, headers=headers)
        use = data.get("usage") or {}
        self.metrics.prompt_tokens.labels(remote.tier.name, ctx.cls).inc(use.get("prompt_tokens", 0) or 0)
        self.metrics.generation_tokens.labels(remote.tier.name, ctx.cls).inc(use.get("completion_tokens", 0) or 0)
        data["model"] = ctx.req.model
        cost = self.accounts.charge(ctx, remote.tier, use)
        if cost is not None:
            headers = {**headers, "x-compress-cost": f"{cost:.8f}"}
        self.cache.store(ctx, remote.tier.name, data)
        return status, JSONResponse(data, headers=headers)
