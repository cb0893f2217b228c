"""`compress report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compress.cli import app, console


@app.command()
def report(
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write (plots embedded).")],
    eval_files: Annotated[Optional[list[Path]], typer.Option("--eval", help="eval JSON (repeatable).")] = None,
    bench_files: Annotated[Optional[list[Path]], typer.Option("--bench", help="bench JSON (repeatable).")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Quality metric for the plots (default: the first perplexity).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size for the latency axis (default: the smallest).")] = None,
    title: Annotated[str, typer.Option(help="Report title.")] = "compress report",
) -> None:
    """Draw quality vs latency vs size per model from eval and bench JSON files (one HTML file)."""
    from compress.report import write_report

    path = write_report(output, eval_files or [], bench_files or [], metric=metric, batch_size=batch_size, title=title)
    console.print(f"wrote {path}")
