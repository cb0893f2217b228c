"""Each request-pipeline step alone (auth, limits, route, SLO admission, cache), the pipeline's
observers, strict request parsing, sampling-parameter mapping and log redaction: logic with real
Starlette requests and a fake clock, no model and no server."""

from __future__ import annotations

import asyncio
import logging

import pytest
from starlette.requests import Request

from compress.manifest import LocalTier, Manifest, Quality
from compress.serve import protocol as P
from compress.serve.budget import BudgetConfig, BudgetTracker, RateLimiter
from compress.serve.cache import ResponseCache
from compress.serve.edge import RedactKeys, redact
from compress.serve.metrics import ServeMetrics
from compress.serve.params import sampling_params
from compress.serve.pipeline import Finished, Pipeline, RequestContext
from compress.serve.router import Router
from compress.serve.slo import SLOConfig, SLOController
from compress.serve.steps import Auth, Cache, Limits, Route, SLOAdmission


def _http(**headers: str) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/v1/completions", "query_string": b"",
                    "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]})


def _ctx(body: dict | None = None, **headers: str) -> RequestContext:
    req = P.parse(P.CompletionRequest, {"model": "small", "prompt": "Hi", "temperature": 0, **(body or {})})
    return RequestContext(http=_http(**headers), req=req, chat=False)


def _run(coro):
    return asyncio.run(coro)


def _manifest() -> Manifest:
    tiers = [LocalTier(name=n, path=f"/m/{n}", method="gptq", cost_per_1k_tokens=c, quality=Quality(tasks={"a": q}))
             for n, c, q in (("small", 0.001, 0.62), ("large", 0.002, 0.70))]
    return Manifest(tiers=tiers)


def test_auth_sets_key_and_class_and_refuses_bad_keys():
    auth = Auth(["sk-1"])
    ctx = _ctx({"priority": "batch"}, authorization="Bearer sk-1")
    _run(auth(ctx))
    assert (ctx.api_key, ctx.cls) == ("sk-1", "batch")
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "sk-1"}):
        with pytest.raises(P.APIError) as e:
            _run(auth(_ctx(**headers)))
        assert e.value.status == 401
    with pytest.raises(P.APIError) as e:
        _run(Auth([])(_ctx({"priority": "urgent"})))
    assert e.value.param == "priority"


def test_limits_rate_limit_and_hard_budget():
    now = [0.0]
    limits = Limits(RateLimiter(2), None, clock=lambda: now[0])
    ctx = _ctx()
    _run(limits(ctx))
    _run(limits(ctx))
    with pytest.raises(P.APIError) as e:
        _run(limits(ctx))
    assert e.value.code == "rate_limited" and int(e.value.headers["Retry-After"]) == 60
    budget = BudgetTracker(BudgetConfig(window_s=100, max_tokens=10, hard=True, spike_min_tokens=10**9), start=0.0)
    budget.record(None, 10, None, 5.0)
    with pytest.raises(P.APIError) as e:
        _run(Limits(None, budget, wall=lambda: 30.0)(ctx))
    assert e.value.code == "budget_exceeded" and e.value.headers["Retry-After"] == "71"


def test_route_uses_the_slo_tuned_floor():
    slo = SLOController(SLOConfig({"interactive": 1.0}, min_samples=1))
    route = Route(Router(_manifest(), floor=0.95), slo, floor=0.95, keep=0.95, clock=lambda: 10.0)
    ctx = _ctx({"model": "auto"})
    _run(route(ctx))
    assert [t.name for t in ctx.decision.tiers] == ["large"] and ctx.tier == "large" and ctx.floor == 0.95
    slo.observe("interactive", 0.7, 10.0)  # TIGHT: the floor drops by 0.15, so the small tier qualifies
    ctx = _ctx({"model": "auto"})
    _run(route(ctx))
    assert ctx.floor == pytest.approx(0.8) and ctx.tier == "small"


def test_slo_admission_sheds_and_counts_against_the_routed_tier():
    metrics = ServeMetrics()
    slo = SLOController(SLOConfig({"interactive": 1.0}, min_samples=1))
    slo.observe("interactive", 0.9, 10.0)  # SHED: batch work is refused
    step = SLOAdmission(slo, metrics, lambda: [], max_wait_s=0.01, clock=lambda: 10.0)
    ctx = _ctx({"priority": "batch"})
    ctx.cls, ctx.tier = "batch", "small"
    with pytest.raises(P.APIError) as e:
        _run(step(ctx))
    assert e.value.status == 503 and e.value.code == "slo_shed" and ctx.shed
    assert metrics.shed.labels("small", "batch")._value.get() == 1
    ctx = _ctx()
    ctx.tier = "small"
    assert _run(step(ctx)) is None  # interactive still admitted


def test_cache_step_hits_after_a_store_and_keys_on_every_field():
    metrics = ServeMetrics()
    cache = Cache(ResponseCache(), 60.0, metrics)
    route = Route(Router(_manifest()), None, 0.8, 0.95)

    def prepared(body=None, **headers):
        ctx = _ctx(body, **headers)
        _run(route(ctx))
        return ctx

    ctx = prepared({"logprobs": 2})
    assert _run(cache(ctx)) is None and ctx.headers["x-compress-cache"] == "miss"
    cache.store(ctx, "small", {"id": "x", "model": "small", "choices": [], "usage": {"prompt_tokens": 3}})
    hit = _run(cache(prepared({"logprobs": 2})))
    assert hit is not None and hit.headers["x-compress-cache"] == "hit"
    for other in ({"logprobs": 1}, {"echo": True, "logprobs": 2}, {"logit_bias": {"5": 1}, "logprobs": 2},
                  {"presence_penalty": 0.5, "logprobs": 2}, {"n": 2, "logprobs": 2}):
        assert _run(cache(prepared(other))) is None, other
    sampled = prepared({"temperature": 0.7, "logprobs": 2})
    assert _run(cache(sampled)) is None and not sampled.policy.write  # sampled answers are not cached


def test_pipeline_closes_once_and_tells_every_observer():
    seen: list[Finished] = []
    counted: list[int] = []

    class Refuse:
        async def __call__(self, ctx):
            ctx.tier = "small"
            raise P.APIError(429, "full")

    class Answer:
        async def __call__(self, ctx):
            from starlette.responses import JSONResponse

            ctx.tier, ctx.prompt_tokens, ctx.completion_tokens, ctx.cost = "large", 3, 4, 0.5
            return JSONResponse({})

    def broken(_done):
        raise RuntimeError("observer bug")

    p = Pipeline([Answer()], lambda ctx, status: counted.append(status))
    p.observers += [broken, seen.append]
    ctx = _ctx()
    resp = _run(p.run(ctx))
    ctx.close(200)  # a second close is ignored
    assert resp.status_code == 200 and counted == [200]
    assert seen[0].tier == "large" and (seen[0].prompt_tokens, seen[0].completion_tokens, seen[0].cost) == (3, 4, 0.5)
    with pytest.raises(P.APIError):
        _run(Pipeline([Refuse()], lambda ctx, status: counted.append(status)).run(_ctx()))
    assert counted == [200, 429]


def test_parse_is_strict_and_names_fields():
    for body, param in (({"max_tokens": True}, "max_tokens"), ({"stream": "yes"}, "stream"),
                        ({"n": "4"}, "n"), ({"prompt": ["a", 1]}, "prompt"), ({"prompt": "x\ud800"}, "prompt"),
                        ({"messages": 1}, "messages")):
        with pytest.raises(P.APIError) as e:
            P.parse(P.CompletionRequest if "messages" not in body else P.ChatRequest,
                    {"model": "m", "prompt": "x", **body})
        assert e.value.status == 400 and e.value.param == param, body
    with pytest.raises(P.APIError) as e:
        P.parse(P.CompletionRequest, {"model": "m", "prompt": "x", "tools": [1], "suffix": "s"})
    assert e.value.param == "tools,suffix" or e.value.param == "suffix,tools"
    assert P.parse(P.CompletionRequest, {"model": "m", "prompt": "x", "temperature": 1}).temperature == 1.0


def test_sampling_params_map_every_field():
    req = P.parse(P.CompletionRequest, {"model": "m", "prompt": "x", "max_tokens": 5, "seed": 10, "n": 3,
                                        "logit_bias": {"3": -100}, "presence_penalty": 0.5, "echo": True,
                                        "logprobs": 2, "stop_token_ids": [4], "min_tokens": 2, "top_k": -1})
    p = sampling_params(req, False, n_prompt=4, max_context=64, vocab=100, sample=2)
    assert (p.max_tokens, p.seed, p.logit_bias, p.presence_penalty, p.logprobs, p.prompt_logprobs) == \
        (5, 12, ((3, -100.0),), 0.5, 2, 2)
    assert (p.stop_token_ids, p.min_tokens, p.top_k) == ((4,), 2, 0)
    chat = P.parse(P.ChatRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": True,
                                   "max_completion_tokens": 3})
    p = sampling_params(chat, True, n_prompt=4, max_context=64, vocab=100)
    assert (p.max_tokens, p.logprobs, p.prompt_logprobs) == (3, 0, None)
    with pytest.raises(P.APIError) as e:
        sampling_params(req, False, n_prompt=62, max_context=64, vocab=100)
    assert e.value.code == "context_length_exceeded"
    big = P.parse(P.CompletionRequest, {"model": "m", "prompt": "x", "seed": 2**63 - 2, "n": 3})
    with pytest.raises(P.APIError) as e:
        sampling_params(big, False, n_prompt=4, max_context=64, vocab=100)
    assert e.value.param == "seed"


def test_keys_are_redacted_from_log_lines():
    assert redact("POST /v1/completions?api_key=sk-secret&x=1 HTTP/1.1") == \
        "POST /v1/completions?api_key=[redacted]&x=1 HTTP/1.1"
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s"', ("1.2.3.4", "GET",
                               "/v1/models?key=abc&token=def"), None)
    RedactKeys().filter(record)
    assert "abc" not in record.getMessage() and "def" not in record.getMessage()


def test_recipe_serve_block_is_validated(tmp_path):
    from compress.errors import CompressError
    from compress.recipe import load_recipe
    from compress.serve.options import serve_options

    base = "schema_version: 1\nname: r\nmodel: m\ntiers: [{name: source}]\n"
    (tmp_path / "ok.yaml").write_text(base + "serve: {slo_p95: 2.0, max_batch: 16}\n")
    r = load_recipe(tmp_path / "ok.yaml")
    assert r.serve.model_dump(exclude_unset=True) == {"slo_p95": 2.0, "max_batch": 16}
    for bad, message in (("serve: {max_btach: 16}", "serve.max_btach: unknown key"),
                         ("serve: {max_batch: 0}", "serve.max_batch"), ("serve: {route_floor: 2}", "serve.route_floor")):
        (tmp_path / "bad.yaml").write_text(base + bad + "\n")
        with pytest.raises(CompressError, match=message.replace(".", r"\.")):
            load_recipe(tmp_path / "bad.yaml")
    with pytest.raises(CompressError, match="--max-batch"):
        serve_options(max_batch=0)
    assert serve_options(max_body_mb=1).settings("cpu").max_body_bytes == 1 << 20
