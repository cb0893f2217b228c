"""`compress report`: the model comparison (eval/bench files) or the weekly serving review (--serve/--prometheus)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from compress.cli import app, console
from compress.errors import CompressError


@app.command()
def report(
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write (plots embedded).")],
    eval_files: Annotated[Optional[list[Path]], typer.Option("--eval", help="eval JSON (repeatable).")] = None,
    bench_files: Annotated[Optional[list[Path]], typer.Option("--bench", help="bench JSON (repeatable).")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Quality metric for the plots (default: the first perplexity).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size for the latency axis (default: the smallest).")] = None,
    title: Annotated[Optional[str], typer.Option(help="Report title.")] = None,
    serve: Annotated[Optional[str], typer.Option("--serve", help="Weekly review from this `compress serve` URL's history.")] = None,
    prometheus: Annotated[Optional[str], typer.Option("--prometheus", help="Weekly review from this Prometheus server (which scrapes compress serve).")] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="COMPRESS_API_KEY", help="API key for --serve.")] = None,
    period: Annotated[str, typer.Option(help="Review period ending at --end: 7d, 24h, 30m...; compared with the period before.")] = "7d",
    step: Annotated[Optional[str], typer.Option(help="Point spacing of the panels (default: about 168 points per period).")] = None,
    end: Annotated[Optional[datetime], typer.Option(help="End of the period (ISO time, UTC unless an offset is given; default: now).")] = None,
) -> None:
    """Draw quality vs latency vs size per model from eval and bench JSON files (one HTML file); or, with
    --serve URL / --prometheus URL, the weekly review of a serving deployment."""
    if serve or prometheus:
        from compress.review import parse_duration, write_review

        if eval_files or bench_files or metric or batch_size:
            raise CompressError("--serve/--prometheus make the serving review; --eval, --bench, --metric and "
                                "--batch-size belong to the model comparison")
        end_ts = None
        if end is not None:
            end_ts = (end if end.tzinfo else end.replace(tzinfo=timezone.utc)).timestamp()
        path = write_review(output, serve_url=serve, prometheus_url=prometheus, api_key=api_key,
                            period_s=parse_duration(period), end=end_ts,
                            step_s=parse_duration(step) if step else None, title=title or "compress weekly review")
        console.print(f"wrote {path}")
        return
    from compress.report import write_report

    if not eval_files and not bench_files:
        raise CompressError("give --eval/--bench files (model comparison) or --serve/--prometheus URL (serving review)")
    path = write_report(output, eval_files or [], bench_files or [], metric=metric, batch_size=batch_size,
                        title=title or "compress report")
    console.print(f"wrote {path}")
