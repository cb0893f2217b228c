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
    shutdown_timeout: Annotated[float, typer.Option(help="Seconds in-flight requests get to finish on SIGTERM; then they get a 503.")] = 60.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body in MiB; larger ones get a 413.")] = 4.0,
    header_timeout: Annotated[float, typer.Option(help="Seconds a connection may take to send its request headers.")] = 10.0,
    body_timeout: Annotated[float, typer.Option(help="Seconds a request body may pause between chunks (then 408).")] = 30.0,
    max_model_len: Annotated[Optional[int], typer.Option(help="Tokens (prompt + answer) a KV slot holds (default: the model's context, at most 8192 on a GPU, 2048 on a CPU).")] = None,
    prefill_budget: Annotated[Optional[int], typer.Option(help="Prompt tokens prefilled per engine step: bounds how long a long prompt stalls running streams (default 2048 on a GPU, 512 on a CPU).")] = None,
    engine_process: Annotated[Optional[bool], typer.Option("--engine-process/--engine-thread", help="Run each local tier's engine in its own process (the HTTP event loop never waits on the engine's GIL), or in a thread of the server process (default: a process on a GPU, a thread on a CPU).", show_default=False)] = None,
) -> None:
    """Serve the manifest's tiers over an OpenAI-compatible HTTP API."""
    options = {k: v for k, v in locals().items() if k != "manifest"}
    from compress import runtime
    from compress.serve.app import serve as run
    from compress.serve.options import serve_options

    opts = serve_options(**options)
    settings = opts.settings(runtime.default_device())
    run(str(manifest), settings, host=opts.host, port=opts.port, shutdown_timeout_s=opts.shutdown_timeout)
