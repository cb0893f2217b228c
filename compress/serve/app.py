"""The HTTP layer of `compress serve`: the FastAPI app, its routes and error handlers, and `serve()`.

Thin by design: a completion or chat request is parsed strictly (protocol.py) into a
`RequestContext` and run through the request pipeline (pipeline.py):

    Auth -> Limits -> Route -> SLOAdmission -> Cache -> Dispatch     (steps.py, dispatch.py)

Every failure a client can cause is a 4xx with `{"error": {message, type, param, code}}`; nothing a
request does stops the server. Before the app: edge.py's body limit (413) and read timeouts (408),
and key redaction in the logs. `app.state.pipeline.observers` is where a subscriber (the dashboard)
hooks in to hear of every finished request (see pipeline.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from compress.manifest import LocalTier, Manifest
from compress.serve import protocol as P
from compress.serve.accounting import Accounts
from compress.serve.budget import BudgetConfig, RateLimiter
from compress.serve.cache import ResponseCache, SqliteResponseCache
from compress.serve.dispatch import Dispatch, Tiers
from compress.serve.edge import BodyLimit, header_timeout_protocol, install_log_redaction
from compress.serve.engine import AsyncEngine, load_engine
from compress.serve.local import ShutdownGate
from compress.serve.metrics import CONTENT_TYPE_LATEST, ServeMetrics
from compress.serve.pipeline import Pipeline, RequestContext
from compress.serve.protocol import APIError
from compress.serve.remote import RemoteTier
from compress.serve.router import Router
from compress.serve.slo import SLOConfig, SLOController
from compress.serve.dashboard import router as dashboard_router
from compress.serve.history import History
from compress.serve.series import ExtraSeries
from compress.serve.steps import Auth, Cache, Limits, Route, SLOAdmission

log = logging.getLogger("compress.serve")


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
    max_body_bytes: int = 4 << 20  # larger request bodies get a 413
    header_timeout_s: float = 10.0  # a connection's request headers must arrive within this
    body_timeout_s: float = 30.0  # the body must keep arriving: at most this between its chunks
    max_model_len: int | None = None  # tokens a KV slot holds; None: load_engine's default
    prefill_budget: int | None = None  # prompt tokens prefilled per engine step; None: load_engine's default
    engine_process: bool = False  # each local tier's engine in its own process (engine_proc.py), not a thread


def create_app(manifest: Manifest, settings: ServeSettings, engines: dict[str, AsyncEngine] | None = None) -> FastAPI:
    """The app; local tiers' engines are loaded at startup (before the port opens) unless given (`engines`, by
    tier name: engine.AsyncEngine or engine_proc.ProcEngine)."""
    metrics = ServeMetrics() if not engines else next(iter(engines.values())).metrics
    tiers = Tiers(engines=dict(engines or {}))
    gate = ShutdownGate()
    pipeline, router = _pipeline(manifest, settings, metrics, tiers, gate)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        try:
            for tier in manifest.tiers:
                if isinstance(tier, LocalTier):
                    if tier.name not in tiers.engines:
                        log.info("loading tier %s from %s", tier.name, tier.path)
                        tiers.engines[tier.name] = await asyncio.to_thread(
                            load_engine, tier, settings.device, max_batch=settings.max_batch,
                            max_wait_s=settings.max_wait_ms / 1000, max_queue=settings.max_queue, metrics=metrics,
                            max_len=settings.max_model_len, prefill_budget=settings.prefill_budget,
                            process=settings.engine_process)
                else:
                    tiers.remotes[tier.name] = RemoteTier(tier)
        except BaseException:  # a tier failed to load: end the engine processes already started
            for eng in tiers.engines.values():
                await asyncio.to_thread(eng.stop, 10)
            raise
        for eng in tiers.engines.values():
            eng.start()
        yield
        # uvicorn has already stopped accepting and waited for in-flight requests.
        for eng in tiers.engines.values():
            await asyncio.to_thread(eng.stop, 30)
        for rem in tiers.remotes.values():
            await rem.close()

    app = FastAPI(title="compress serve", lifespan=lifespan)
    app.state.pipeline, app.state.shutdown_gate, app.state.metrics = pipeline, gate, metrics
    _error_handlers(app)
    app.include_router(dashboard_router(History(metrics.registry), settings.api_keys))  # /dashboard (dashboard.py)
    auth = pipeline.steps[0]

    @app.get("/health")
    async def health():
        names = [t.name for t in manifest.tiers]
        down = {name: eng.down for name, eng in tiers.engines.items() if eng.down}
        if not down:
            return {"status": "ok", "tiers": names}
        # Degraded: the other tiers (and fallbacks to them) still serve; 503 once no tier can.
        return JSONResponse({"status": "degraded", "tiers": names, "down": down},
                            status_code=503 if len(down) == len(names) else 200)

    @app.get("/metrics")
    async def prom():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        auth.check(request.headers)
        now = int(time.time())
        return {"object": "list", "data": [{"id": m, "object": "model", "created": now, "owned_by": "compress"}
                                           for m in router.model_ids()]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _run(pipeline, request, P.CompletionRequest, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await _run(pipeline, request, P.ChatRequest, chat=True)

    if settings.max_body_bytes:
        app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, read_timeout_s=settings.body_timeout_s)
    return app


def _pipeline(manifest: Manifest, settings: ServeSettings, metrics: ServeMetrics, tiers: Tiers,
              gate: ShutdownGate) -> tuple[Pipeline, Router]:
    learned = None
    if manifest.router is not None:
        from compress.serve.learned import load_router

        learned = load_router(manifest.router, [t.name for t in manifest.tiers])
    router = Router(manifest, floor=settings.route_floor, learned=learned, keep=settings.route_keep)
    store = (SqliteResponseCache(settings.cache_db, settings.cache_max_bytes) if settings.cache_db
             else ResponseCache(settings.cache_max_bytes))
    targets = {**{c: s.p95_s for c, s in manifest.slo.items()}, **settings.slo_p95_s}
    slo = SLOController(SLOConfig(targets, window_s=settings.slo_window_s)) if targets else None
    for cls_, target in targets.items():
        metrics.slo_target.labels(cls_).set(target)
    limiter = RateLimiter(settings.rate_limit_rpm) if settings.rate_limit_rpm else None
    accounts = Accounts(metrics, settings.budget, settings.alert_webhook)
    cache = Cache(store, settings.cache_ttl_s, metrics)
    extra = ExtraSeries(metrics.registry, targets, accounts.budget)  # dashboard and alert series (series.py)

    def on_close(ctx: RequestContext, status: int) -> None:
        metrics.requests.labels(ctx.tier, str(status), ctx.cls).inc()
        if status == 200 and not ctx.cache_hit:
            latency = time.monotonic() - ctx.start
            metrics.e2e.labels(ctx.tier, ctx.cls).observe(latency)
            extra.observe(ctx.tier, ctx.cls, latency)
            if slo is not None:
                slo.observe(ctx.cls, latency, time.monotonic())

    steps = [Auth(settings.api_keys), Limits(limiter, accounts.budget), Route(router, slo, settings.route_floor,
             settings.route_keep), SLOAdmission(slo, metrics, lambda: list(tiers.engines.values()),
                                                settings.max_wait_ms / 1000), cache,
             Dispatch(tiers, cache, accounts, metrics, gate)]
    return Pipeline(steps, on_close), router


async def _run(pipeline: Pipeline, request: Request, model: type, chat: bool) -> Response:
    """Parse the body strictly, then run the pipeline. A request refused here (auth, bad JSON, bad
    fields) is still counted, under tier "none"."""
    ctx = RequestContext(http=request, req=None, chat=chat)
    ctx.on_close = pipeline.close
    try:
        pipeline.steps[0].check(request.headers)  # 401 before reading anything else
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise APIError(400, f"request body is not valid JSON ({str(e).split(':')[0][:80]})") from None
        ctx.req = P.parse(model, body)
        if chat and not ctx.req.messages:
            raise APIError(400, "messages must not be empty", param="messages")
    except APIError as e:
        ctx.close(e.status)
        raise
    return await pipeline.run(ctx)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_req: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, e: RequestValidationError):
        err = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        return JSONResponse(APIError(400, f"{'.'.join(loc) or 'body'}: {err.get('msg')}",
                                     param=".".join(loc) or None).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, e: StarletteHTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _bug(_req: Request, e: Exception):
        log.exception("internal error")
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}", type="server_error").body(),
                            status_code=500)


def serve(manifest_path: str, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
          shutdown_timeout_s: float = 60.0) -> None:
    """Run the server until SIGTERM/SIGINT: then stop accepting and let in-flight requests finish.
    Requests still running `shutdown_timeout_s` later get a 503 (streams: a final error event)."""
    import uvicorn

    from compress.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    app = create_app(manifest, settings)
    # uvicorn's own deadline comes a little after ours, so that requests can still send their 503.
    config = uvicorn.Config(app, host=host, port=port, log_level="info", http=header_timeout_protocol(
        settings.header_timeout_s), timeout_graceful_shutdown=shutdown_timeout_s + 5)
    _server_class(app.state.shutdown_gate, shutdown_timeout_s)(config).run()


def _server_class(gate: ShutdownGate, deadline_s: float):
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # After a drained shutdown, exit with status 0 instead of re-raising the signal (uvicorn's
            # default), so supervisors see a clean stop.
            first = not self.should_exit
            super().handle_exit(sig, frame)
            self._captured_signals.clear()
            if first:  # past this, in-flight requests answer 503 (streams: a final error event)
                import threading

                timer = threading.Timer(deadline_s, setattr, (gate, "expired", True))
                timer.daemon = True
                timer.start()

    return Server
