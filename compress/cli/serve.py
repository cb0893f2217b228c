"""`compress serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compress.cli import app


@app.command()
def serve(
    manifest: Annotated[Path, typer.Argument(help="Tier manifest written by `compress manifest`.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait per tier; past it: 429 + Retry-After.")] = 64,
    max_batch: Annotated[int, typer.Option(help="Sequences decoded together per tier.")] = 8,
    max_wait_ms: Annotated[float, typer.Option(help="Longest an idle engine holds a request to fill a batch.")] = 10.0,
    api_key: Annotated[Optional[list[str]], typer.Option("--api-key", help="Accepted API key (repeatable); none = no auth.")] = None,
    api_keys_file: Annotated[Optional[Path], typer.Option(help="File with accepted API keys, one per line (# comments).")] = None,
    rate_limit_rpm: Annotated[Optional[int], typer.Option(help="Requests per minute allowed per API key.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    cache_ttl: Annotated[float, typer.Option(help="Seconds a cached answer (temperature 0) lives; 0 = no cache.")] = 300.0,
    cache_max_mb: Annotated[float, typer.Option(help="Response cache bound (LRU), in MiB.")] = 64.0,
    cache_db: Annotated[Optional[Path], typer.Option(help="SQLite file for the response cache, shared by replicas (default: in-process).")] = None,
    route_floor: Annotated[float, typer.Option(help="`auto`: quality (relative to the best tier) the easiest requests accept.")] = 0.8,
    route_keep: Annotated[float, typer.Option(help="`auto` with a learned router (the manifest's router:): the cheapest tier whose predicted success is at least this share of the best tier's.")] = 0.95,
    slo_p95: Annotated[Optional[float], typer.Option(help="Interactive p95 end-to-end target in seconds (overrides the manifest's slo); enables the SLO controller.")] = None,
    slo_batch_p95: Annotated[Optional[float], typer.Option(help="Batch-class p95 end-to-end target in seconds (overrides the manifest's slo); tracked and reported.")] = None,
    slo_window: Annotated[float, typer.Option(help="Seconds of completions the SLO controller's rolling p95 covers.")] = 30.0,
    budget_tokens: Annotated[Optional[int], typer.Option(help="Global token budget per --budget-window.")] = None,
    budget_cost: Annotated[Optional[float], typer.Option(help="Global cost budget per --budget-window (manifest currency).")] = None,
    key_budget_tokens: Annotated[Optional[int], typer.Option(help="Token budget per API key per --budget-window.")] = None,
    budget_window: Annotated[float, typer.Option(help="Budget window in seconds.")] = 3600.0,
    budget_hard: Annotated[bool, typer.Option("--budget-hard/--budget-soft", help="Refuse (429) once a budget is spent, or only alert.")] = False,
    alert_webhook: Annotated[Optional[str], typer.Option(help="URL that budget alerts are POSTed to as JSON.")] = None,
    shutdown_timeout: Annotated[float, typer.Option(help="Seconds in-flight requests get to finish on SIGTERM.")] = 60.0,
) -> None:
    """Serve the manifest's tiers over an OpenAI-compatible HTTP API."""
    from compress import runtime
    from compress.errors import CompressError
    from compress.serve.app import ServeSettings
    from compress.serve.budget import BudgetConfig
    from compress.serve.app import serve as run

    if (max_batch < 1 or max_queue < 0 or max_wait_ms < 0 or cache_ttl < 0 or not 0 <= route_floor <= 1
            or not 0 <= route_keep <= 1):
        raise CompressError("--max-batch must be >= 1; --max-queue, --max-wait-ms, --cache-ttl >= 0; "
                            "--route-floor and --route-keep in [0, 1]")
    if (slo_p95 is not None and slo_p95 <= 0) or (slo_batch_p95 is not None and slo_batch_p95 <= 0):
        raise CompressError("--slo-p95 and --slo-batch-p95 must be > 0 seconds")
    if slo_window <= 0:
        raise CompressError("--slo-window must be > 0 seconds")
    slos = {c: v for c, v in (("interactive", slo_p95), ("batch", slo_batch_p95)) if v is not None}
    keys = list(api_key or [])
    if api_keys_file is not None:
        if not api_keys_file.is_file():
            raise CompressError(f"API keys file not found: {api_keys_file}")
        keys += [ln.strip() for ln in api_keys_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        if not keys:
            raise CompressError(f"{api_keys_file}: no API keys in it")
    if rate_limit_rpm is not None and rate_limit_rpm < 1:
        raise CompressError("--rate-limit-rpm must be >= 1")
    budget = None
    if budget_tokens is not None or budget_cost is not None or key_budget_tokens is not None:
        if budget_window <= 0:
            raise CompressError("--budget-window must be > 0 seconds")
        budget = BudgetConfig(window_s=budget_window, max_tokens=budget_tokens, max_cost=budget_cost,
                              key_max_tokens=key_budget_tokens, hard=budget_hard)
    settings = ServeSettings(max_queue=max_queue, max_batch=max_batch, max_wait_ms=max_wait_ms,
                             api_keys=keys, rate_limit_rpm=rate_limit_rpm, device=device or runtime.default_device(),
                             cache_ttl_s=cache_ttl, cache_max_bytes=int(cache_max_mb * (1 << 20)),
                             cache_db=str(cache_db) if cache_db else None,
                             route_floor=route_floor, route_keep=route_keep, slo_p95_s=slos, slo_window_s=slo_window,
                             alert_webhook=alert_webhook,
                             budget=budget)
    run(str(manifest), settings, host=host, port=port, shutdown_timeout_s=shutdown_timeout)
