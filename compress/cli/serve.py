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
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    shutdown_timeout: Annotated[float, typer.Option(help="Seconds in-flight requests get to finish on SIGTERM.")] = 60.0,
) -> None:
    """Serve the manifest's tiers over an OpenAI-compatible HTTP API."""
    from compress import runtime
    from compress.errors import CompressError
    from compress.serve.app import ServeSettings
    from compress.serve.app import serve as run

    if max_batch < 1 or max_queue < 0 or max_wait_ms < 0:
        raise CompressError("--max-batch must be >= 1, --max-queue and --max-wait-ms >= 0")
    settings = ServeSettings(max_queue=max_queue, max_batch=max_batch, max_wait_ms=max_wait_ms,
                             api_keys=list(api_key or []), device=device or runtime.default_device())
    run(str(manifest), settings, host=host, port=port, shutdown_timeout_s=shutdown_timeout)
