"""HTTP layer of `compress serve`: FastAPI handlers, API-key check, OpenAI-style errors, SSE.

Handlers turn a request into (tier, prompt token ids, sampling params), hand it to the tier's
engine (or proxy it to a remote tier) and shape the answer. Every failure a client can cause is a
4xx with `{"error": {message, type, param, code}}`; nothing a request does stops the server.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from compress.manifest import LocalTier, Manifest
from compress.serve import cache as cache_mod
from compress.serve import protocol as P
from compress.serve.batcher import CLASSES, SamplingParams
from compress.serve.engine import AsyncEngine, load_engine
from compress.serve.metrics import CONTENT_TYPE_LATEST, ServeMetrics
from compress.serve.protocol import APIError
from compress.serve.remote import RemoteTier
from compress.serve.budget import Alert, BudgetConfig, BudgetTracker, RateLimiter
from compress.serve.cache import ResponseCache, SqliteResponseCache
from compress.serve.router import Router
from compress.serve.slo import SLOConfig, SLOController
from compress.serve.dashboard import router as dashboard_router
from compress.serve.history import History
from compress.serve.series import ExtraSeries

log = logging.getLogger("compress.serve")
_ACCOUNT: contextvars.ContextVar[str | None] = contextvars.ContextVar("compress_account", default=None)
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class ServeSettings:
    max_queue: int = 64
    max_batch: int = 8
    max_wait_ms: float = 10.0
    api_keys: list[str] = field(default_factory=list)
    device: str = "cpu"
    cache_ttl_s: float = 300.0  # default lifetime of a cached answer; 0 turns the cache off
    cache_max_bytes: int = 64 << 20
    cache_db: str | None = None  # a SQLite file shared by replicas; None: in-process cache
    route_floor: float = 0.8  # `auto`: the easiest requests accept tiers within this of the best quality
    route_keep: float = 0.95  # `auto` with a learned router: a tier's predicted success >= this x the best's
    slo_p95_s: dict[str, float] = field(default_factory=dict)  # class -> p95 target; overrides the manifest's
    slo_window_s: float = 30.0  # the SLO controller's rolling window
    budget: BudgetConfig | None = None  # None: no budgets
    rate_limit_rpm: int | None = None  # requests per minute per API key; None: unlimited
    alert_webhook: str | None = None  # budget alerts are POSTed here as JSON


def create_app(manifest: Manifest, settings: ServeSettings, engines: dict[str, AsyncEngine] | None = None) -> FastAPI:
    """The app; local tiers' engines are loaded at startup (before the port opens) unless given."""
    metrics = ServeMetrics() if not engines else next(iter(engines.values())).metrics
    learned = None
    if manifest.router is not None:
        from compress.serve.learned import load_router

        learned = load_router(manifest.router, [t.name for t in manifest.tiers])
    router = Router(manifest, floor=settings.route_floor, learned=learned, keep=settings.route_keep)
    cache = (SqliteResponseCache(settings.cache_db, settings.cache_max_bytes) if settings.cache_db
             else ResponseCache(settings.cache_max_bytes))
    targets = {**{c: s.p95_s for c, s in manifest.slo.items()}, **settings.slo_p95_s}
    slo = SLOController(SLOConfig(targets, window_s=settings.slo_window_s)) if targets else None  # None: no SLO controller
    for cls_, target in targets.items():
        metrics.slo_target.labels(cls_).set(target)
    state: dict[str, Any] = {"engines": dict(engines or {}), "remotes": {}}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        for tier in manifest.tiers:
            if isinstance(tier, LocalTier):
                if tier.name not in state["engines"]:
                    log.info("loading tier %s from %s", tier.name, tier.path)
                    state["engines"][tier.name] = await asyncio.to_thread(
                        load_engine, tier, settings.device, max_batch=settings.max_batch,
                        max_wait_s=settings.max_wait_ms / 1000, max_queue=settings.max_queue, metrics=metrics)
            else:
                state["remotes"][tier.name] = RemoteTier(tier)
        for eng in state["engines"].values():
            eng.start()
        yield
        # uvicorn has already stopped accepting and waited for in-flight requests.
        for eng in state["engines"].values():
            await asyncio.to_thread(eng.stop, 30)
        for rem in state["remotes"].values():
            await rem.close()

    app = FastAPI(title="compress serve", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def _api_error(_req: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, e: RequestValidationError):
        err = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            msg = "request body is not valid JSON"
        elif not loc:
            msg = "request body must be a JSON object"
        else:
            msg = f"{'.'.join(loc) or 'body'}: {err.get('msg')}"
        return JSONResponse(APIError(400, msg, param=".".join(loc) or None).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, e: StarletteHTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _bug(_req: Request, e: Exception):
        log.exception("internal error")
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}", type="server_error").body(),
                            status_code=500)

    def charge(tier, cls: str, use: dict) -> float | None:
        """Account for an answered request: cost metric and budgets. Returns its cost (None = unknown)."""
        cost = _cost(tier, use)
        if cost is not None:
            metrics.cost.labels(tier.name, cls).inc(cost)
        if budget is not None:
            budget.record(_ACCOUNT.get(), int(use.get("total_tokens") or 0), cost, time.time())
        return cost

    def on_alert(alert: Alert) -> None:
        log.warning("budget alert (%s): %s", alert.kind, alert.message)
        metrics.budget_alerts.labels(alert.kind).inc()
        if settings.alert_webhook:
            payload = {"kind": alert.kind, "scope": alert.scope, "message": alert.message}

            async def post():
                try:
                    async with httpx.AsyncClient(timeout=5) as c:
                        await c.post(settings.alert_webhook, json=payload)
                except httpx.HTTPError as e:
                    log.warning("alert webhook failed: %s", type(e).__name__)

            try:
                asyncio.get_running_loop().create_task(post())
            except RuntimeError:
                pass

    budget = BudgetTracker(settings.budget, on_alert, start=time.time()) if settings.budget else None
    limiter = RateLimiter(settings.rate_limit_rpm) if settings.rate_limit_rpm else None
    extra = ExtraSeries(metrics.registry, targets, budget)  # dashboard/alert series (series.py)
    history = History(metrics.registry)  # per-minute aggregates for /dashboard (history.py)
    app.include_router(dashboard_router(history, settings.api_keys))

    def engines_() -> list[AsyncEngine]:
        return list(state["engines"].values())

    def finished(tier: str, cls: str, start: float) -> None:
        latency = time.monotonic() - start
        metrics.e2e.labels(tier, cls).observe(latency)
        extra.observe(tier, cls, latency)
        if slo is not None:
            slo.observe(cls, latency, time.monotonic())

    def check_key(request: Request) -> None:
        if not settings.api_keys:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or key.strip() not in settings.api_keys:
            raise APIError(401, "missing or invalid API key (send Authorization: Bearer KEY)",
                           type="authentication_error", code="invalid_api_key")

    @app.get("/health")
    async def health():
        return {"status": "ok", "tiers": [t.name for t in manifest.tiers]}

    @app.get("/metrics")
    async def prom():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        now = int(time.time())
        return {"object": "list", "data": [{"id": m, "object": "model", "created": now, "owned_by": "compress"}
                                           for m in router.model_ids()]}

    @app.post("/v1/completions")
    async def completions(req: P.CompletionRequest, request: Request):
        check_key(request)
        return await _handle(req, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(req: P.ChatRequest, request: Request):
        check_key(request)
        if not req.messages:
            raise APIError(400, "messages must not be empty", param="messages")
        return await _handle(req, request, chat=True)

    async def _handle(req, request: Request, chat: bool):
        if req.n != 1:
            raise APIError(400, "only n=1 is supported", param="n")
        prompt_text = "\n".join(m.text() for m in req.messages) if chat else _prompt_text(req.prompt)
        cls = _priority_class(req, request)
        auth_key = request.headers.get("authorization", "").partition(" ")[2].strip() or None
        _ACCOUNT.set(auth_key)
        if limiter is not None:
            wait = limiter.admit(auth_key, time.monotonic())
            if wait is not None:
                raise APIError(429, f"rate limit of {limiter.per_minute} requests per minute reached",
                               type="rate_limit_error", code="rate_limited",
                               headers={"Retry-After": str(max(1, math.ceil(wait)))})
        if budget is not None:
            why = budget.refusal(auth_key, time.time())
            if why:
                window = budget.config.window_s
                retry = int(window - (time.time() - budget.start) % window) + 1
                raise APIError(429, f"budget exceeded: {why}", type="rate_limit_error", code="budget_exceeded",
                               headers={"Retry-After": str(retry)})
        floor = keep = None
        if slo is not None:
            now = time.monotonic()
            for c in CLASSES:
                metrics.slo_state.labels(c).set(int(slo.state(now, c)))
                p95 = slo.p95(c, now)
                metrics.slo_p95.labels(c).set(float("nan") if p95 is None else p95)
            max_wait_s = settings.max_wait_ms / 1000 * slo.wait_scale(now)
            for eng in engines_():
                eng.core.batcher.max_wait_s = max_wait_s
            floor = slo.route_floor(settings.route_floor, now)
            keep = slo.route_floor(settings.route_keep, now)
        decision = router.route(req.model, prompt_text, _requested_tokens(req), floor=floor, keep=keep)
        if slo is not None and not slo.admit(cls, now):
            metrics.shed.labels(decision.tiers[0].name, cls).inc()
            raise APIError(503, f"shedding {cls} load to keep interactive p95 under "
                           f"{targets['interactive']:g} s; retry later", type="server_error",
                           code="slo_shed", headers={"Retry-After": "2"})
        if decision.difficulty is not None:
            log.info("route %s: %s", req.model, decision.describe())
        body = req.model_dump(exclude_unset=True)
        pol = cache_mod.policy(request.headers.get("cache-control"), settings.cache_ttl_s,
                               deterministic=req.temperature == 0 and settings.cache_ttl_s > 0)
        scope = cache_mod.scope(req.user, auth_key,
                                request.headers.get("x-compress-cache-scope", "").lower() == cache_mod.SHARED)
        for i, tier in enumerate(decision.tiers):
            headers = {"x-compress-tier": tier.name, "x-compress-class": cls}
            key = cache_mod.cache_key(scope, tier.name, body) if (pol.read or pol.write) else None
            if pol.read:
                hit = cache.get(key, pol.max_age_s)
                metrics.cache.labels(tier.name, cls, "hit" if hit else "miss").inc()
                if hit is not None:
                    hit["model"] = req.model
                    metrics.requests.labels(tier.name, "200", cls).inc()
                    headers = {**headers, "x-compress-cache": "hit", "x-compress-cost": "0"}
                    if req.stream:  # the stored answer, replayed as server-sent events
                        return StreamingResponse(_replay(hit, chat, _include_usage(req)), headers=headers,
                                                 media_type="text/event-stream")
                    return JSONResponse(hit, headers=headers)
            if pol.read or pol.write:
                headers["x-compress-cache"] = "miss"

            def store(answer: dict, key=key) -> None:
                if pol.write and key is not None:
                    cache.put(key, answer, pol.ttl_s)

            try:
                if tier.name in state["remotes"]:
                    status, resp = await _proxy(state["remotes"][tier.name], req, chat, headers, cls, store)
                    if status in _RETRYABLE and i + 1 < len(decision.tiers):
                        raise APIError(status, "remote tier failed")
                else:
                    resp = await _local(state["engines"][tier.name], tier, req, request, chat, headers, cls, store)
            except APIError as e:
                if e.status in _RETRYABLE and i + 1 < len(decision.tiers):
                    metrics.fallbacks.labels(tier.name, cls, str(e.status)).inc()
                    log.info("tier %s answered %d; falling back to %s", tier.name, e.status,
                             decision.tiers[i + 1].name)
                    continue
                raise
            return resp
        raise AssertionError("unreachable: the last tier either answers or raises")

    async def _local(engine: AsyncEngine, tier, req, request: Request, chat: bool, headers: dict, cls: str,
                     store: Callable[[dict], None]):
        """The response from a local tier's engine; a completed answer is handed to `store` (the cache)."""
        prompt_ids = _chat_ids(engine, req) if chat else _prompt_ids(engine, req)
        params = _params(engine, req, len(prompt_ids), chat)
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        start = time.monotonic()
        stream = engine.generate(rid, prompt_ids, params, priority=PRIORITY[cls])
        first = await _first_event(stream, tier.name, cls)  # queue full / model failure: still retryable
        if req.stream:
            # A stream's cost is known only at its end: the exact cost goes into the final usage chunk
            # (with stream_options.include_usage); the header is an upper bound (prompt + max_tokens).
            bound = _cost(tier, P.usage(len(prompt_ids), params.max_tokens))
            if bound is not None:
                headers = {**headers, "x-compress-cost-max": f"{bound:.8f}"}
            return StreamingResponse(
                _sse(first, stream, rid, req, chat, len(prompt_ids), tier, start, cls, store),
                media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
        try:
            text, finish, n_out = await _collect(first, stream, request, tier.name, start, cls)
        except _ClientGone:
            return Response(status_code=499)  # nobody is listening; nginx's "client closed request"
        use = P.usage(len(prompt_ids), n_out)
        metrics.prompt_tokens.labels(tier.name, cls).inc(len(prompt_ids))
        answer = (P.chat_body if chat else P.completion_body)(rid, req.model, text, finish, use)
        cost = charge(tier, cls, use)
        if cost is not None:
            headers = {**headers, "x-compress-cost": f"{cost:.8f}"}
        store(answer)
        return JSONResponse(answer, headers=headers)

    async def _first_event(stream, tier: str, cls: str):
        try:
            ev = await stream.__anext__()
            if ev.finished and ev.seq.finish_reason == "error":
                raise APIError(500, f"generation failed: {ev.seq.error}", type="server_error")
            return ev
        except APIError as e:
            metrics.requests.labels(tier, str(e.status), cls).inc()
            raise

    async def _collect(first, stream, request: Request, tier: str, start: float, cls: str) -> tuple[str, str, int]:
        parts, n_out, ev = [], 0, first
        checked = time.monotonic()
        try:
            while True:
                parts.append(ev.delta)
                n_out += ev.new_tokens
                if ev.finished:
                    if ev.seq.finish_reason == "error":
                        raise APIError(500, f"generation failed: {ev.seq.error}", type="server_error")
                    break
                nxt = asyncio.ensure_future(stream.__anext__())
                while not nxt.done():
                    await asyncio.wait([nxt], timeout=0.5)
                    # Checked every 0.5 s whether or not tokens keep coming.
                    if time.monotonic() - checked < 0.5:
                        continue
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        # Cancelling the pending read runs the generator's cleanup, which aborts the
                        # sequence and frees its batch slot.
                        nxt.cancel()
                        await asyncio.gather(nxt, return_exceptions=True)
                        await stream.aclose()  # if the read had already finished: abort here
                        metrics.requests.labels(tier, "499", cls).inc()
                        raise _ClientGone()
                ev = nxt.result()
        except APIError as e:
            metrics.requests.labels(tier, str(e.status), cls).inc()
            raise
        metrics.requests.labels(tier, "200", cls).inc()
        finished(tier, cls, start)
        return "".join(parts), ev.seq.finish_reason, n_out

    async def _sse(first, stream, rid, req, chat, n_prompt, tier, start, cls, store) -> AsyncIterator[bytes]:
        model, n_out, status, parts, done = req.model, 0, "200", [], None

        def chunk(delta_text: str, finish: str | None) -> bytes:
            if chat:
                body = P.chat_chunk(rid, model, {"content": delta_text} if delta_text or not finish else {}, finish)
            else:
                body = P.completion_chunk(rid, model, delta_text, finish)
            return _event(body)

        try:
            if chat:
                yield _event(P.chat_chunk(rid, model, {"role": "assistant", "content": ""}, None))
            ev = first
            while True:
                n_out += ev.new_tokens
                parts.append(ev.delta)
                if ev.finished:
                    reason = ev.seq.finish_reason
                    if reason == "error":
                        status = "500"
                        yield _event(APIError(500, f"generation failed: {ev.seq.error}", type="server_error").body())
                        break
                    if ev.delta:
                        yield chunk(ev.delta, None)
                    yield chunk("", reason)
                    done = reason
                    break
                if ev.delta:
                    yield chunk(ev.delta, None)
                ev = await stream.__anext__()
            if done is not None:
                # Accounted as soon as the text is complete (a client leaving now got every token).
                use = P.usage(n_prompt, n_out)
                metrics.prompt_tokens.labels(tier.name, cls).inc(n_prompt)
                finished(tier.name, cls, start)
                cost = charge(tier, cls, use)
                store((P.chat_body if chat else P.completion_body)(rid, model, "".join(parts), done, use))
                if _include_usage(req):
                    yield _event((P.chat_chunk if chat else P.completion_chunk)(
                        rid, model, {} if chat else "", None, {**use, "cost": cost}, choices=False))
            yield b"data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            if done is None:
                status = "499"  # client went away: the engine drops the sequence (stream.aclose below)
            raise
        finally:
            await stream.aclose()
            metrics.requests.labels(tier.name, status, cls).inc()

    async def _proxy(remote: RemoteTier, req, chat: bool, headers: dict[str, str], cls: str,
                     store: Callable[[dict], None]):
        """(status, response) from a remote tier; a successful non-streaming answer goes to `store`.
        Streams are relayed as they come (not parsed: neither cached nor costed)."""
        path = "/chat/completions" if chat else "/completions"
        body = req.model_dump(exclude_unset=True)  # forward what the client sent, no defaults of ours
        for field_ in ("priority",):  # ours, not OpenAI's
            body.pop(field_, None)
        start = time.monotonic()
        name = remote.tier.name
        if req.stream:
            status, result = await remote.stream(path, body)
            metrics.requests.labels(name, str(status), cls).inc()
            if status != 200:
                return status, JSONResponse(result, status_code=status, headers=headers)

            async def relay():
                async for part in result:
                    yield part
                finished(name, cls, start)

            return status, StreamingResponse(relay(), media_type="text/event-stream", headers=headers)
        status, data = await remote.request(path, body)
        metrics.requests.labels(name, str(status), cls).inc()
        if status != 200:
            return status, JSONResponse(data, status_code=status, headers=headers)
        finished(name, cls, start)
        use = data.get("usage") or {}
        metrics.prompt_tokens.labels(name, cls).inc(use.get("prompt_tokens", 0) or 0)
        metrics.generation_tokens.labels(name, cls).inc(use.get("completion_tokens", 0) or 0)
        data["model"] = req.model
        cost = charge(remote.tier, cls, use)
        if cost is not None:
            headers = {**headers, "x-compress-cost": f"{cost:.8f}"}
        store(data)
        return status, JSONResponse(data, headers=headers)

    return app


# ---------------------------------------------------------------- request -> tokens and params


class _ClientGone(Exception):
    pass


def _event(body: dict) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _include_usage(req) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


async def _replay(answer: dict, chat: bool, include_usage: bool) -> AsyncIterator[bytes]:
    """A cached (non-streaming) answer as the events a live stream would have sent: role, the whole
    text in one chunk, the finish reason, usage (cost 0: a hit costs nothing) when asked, [DONE]."""
    rid, model, choice = answer["id"], answer["model"], answer["choices"][0]
    finish, use = choice["finish_reason"], answer.get("usage")
    if chat:
        text = choice["message"]["content"]
        yield _event(P.chat_chunk(rid, model, {"role": "assistant", "content": ""}, None))
        if text:
            yield _event(P.chat_chunk(rid, model, {"content": text}, None))
        yield _event(P.chat_chunk(rid, model, {}, finish))
    else:
        text = choice["text"]
        if text:
            yield _event(P.completion_chunk(rid, model, text, None))
        yield _event(P.completion_chunk(rid, model, "", finish))
    if include_usage and use:
        yield _event((P.chat_chunk if chat else P.completion_chunk)(rid, model, {} if chat else "", None,
                                                                    {**use, "cost": 0.0}, choices=False))
    yield b"data: [DONE]\n\n"


_RETRYABLE = {429, 500, 502, 503}
PRIORITY = {c: i for i, c in enumerate(CLASSES)}


def _priority_class(req, request: Request) -> str:
    """`priority` field ("interactive"/"batch", or vLLM's integer: 0 or less = interactive) or the
    `x-compress-priority` header; interactive by default."""
    value = getattr(req, "priority", None)
    if value is None:
        value = request.headers.get("x-compress-priority")
    if value is None:
        return "interactive"
    if isinstance(value, str) and value.lower() in PRIORITY:
        return value.lower()
    try:
        return "interactive" if int(value) <= 0 else "batch"
    except (TypeError, ValueError):
        raise APIError(400, "priority must be 'interactive', 'batch' or an integer", param="priority") from None


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return " ".join(p for p in prompt if isinstance(p, str)) if prompt else ""


def _requested_tokens(req) -> int | None:
    return getattr(req, "max_completion_tokens", None) or req.max_tokens


def _cost(tier, use: dict) -> float | None:
    """The request's cost in the manifest's currency: (prompt + completion tokens) / 1000 x cost per 1k."""
    if tier is None or tier.cost_per_1k_tokens is None:
        return None
    return (use.get("total_tokens") or 0) / 1000.0 * tier.cost_per_1k_tokens


def _prompt_ids(engine: AsyncEngine, req: P.CompletionRequest) -> list[int]:
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and all(isinstance(x, str) for x in prompt):
        if len(prompt) != 1:
            raise APIError(400, "only one prompt per request is supported", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, list):
        ids = [int(x) for x in prompt]
        vocab = len(engine.tokenizer)
        if any(not 0 <= i < vocab for i in ids):
            raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
    else:
        ids = engine.tokenizer(prompt)["input_ids"]
    if not ids:
        raise APIError(400, "prompt is empty", param="prompt")
    return ids


def _chat_ids(engine: AsyncEngine, req: P.ChatRequest) -> list[int]:
    tok = engine.tokenizer
    if not getattr(tok, "chat_template", None):
        raise APIError(400, f"model {req.model!r} has no chat template; use /v1/completions", param="model")
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    try:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - templates raise on role orders they do not accept
        raise APIError(400, f"chat template rejected the messages: {str(e).splitlines()[0][:200]}",
                       param="messages") from None
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise APIError(400, "messages render to an empty prompt", param="messages")
    return ids


def _params(engine: AsyncEngine, req, n_prompt: int, chat: bool) -> SamplingParams:
    ctx = engine.max_context
    if n_prompt >= ctx:
        raise APIError(400, f"prompt is {n_prompt} tokens; this model's context is {ctx} tokens",
                       param="messages" if chat else "prompt", code="context_length_exceeded")
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
    if max_tokens is None:
        max_tokens = ctx - n_prompt if chat else min(DEFAULT_COMPLETION_TOKENS, ctx - n_prompt)
    if max_tokens < 1:
        raise APIError(400, f"max_tokens must be at least 1 (got {max_tokens})", param="max_tokens")
    if n_prompt + max_tokens > ctx:
        raise APIError(400, f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceeds this model's "
                       f"context of {ctx} tokens", param="max_tokens", code="context_length_exceeded")
    return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                          stop=tuple(req.stop_list()), ignore_eos=req.ignore_eos)


def serve(manifest_path: str, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
          shutdown_timeout_s: float = 60.0) -> None:
    """Run the server until SIGTERM/SIGINT: then stop accepting, let in-flight requests finish, exit."""
    import uvicorn

    from compress.manifest import load_manifest

    _Server = _uvicorn_server_class()
    manifest = load_manifest(manifest_path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(manifest, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="info",
                            timeout_graceful_shutdown=shutdown_timeout_s)
    _Server(config).run()


def _uvicorn_server_class():
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # After a drained shutdown, exit with status 0 instead of re-raising the signal (uvicorn's
            # default), so supervisors see a clean stop.
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return Server
