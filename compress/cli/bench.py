"""`compress bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compress.cli import app, console


@app.command()
def bench(
    models: Annotated[list[str], typer.Argument(help="Models (directories, artifacts, .gguf files, hub ids); ratios are to the first.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Result JSON.")],
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32",
    prompt_len: Annotated[int, typer.Option(help="Prompt tokens (real text).")] = 128,
    gen_len: Annotated[int, typer.Option(help="New tokens per sequence (exactly; EOS suppressed).")] = 64,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    repeats: Annotated[int, typer.Option(help="Timed runs per batch size (medians reported).")] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed runs per batch size first (compilation happens here).")] = 1,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads: torch's (default: torch's own), or llama.cpp's (default: the cores this process may use).")] = None,
    decoder: Annotated[str, typer.Option(help="auto (CUDA: graph, CPU: generate) | generate | compile | graph.")] = "auto",
    runtime: Annotated[str, typer.Option(help="torch (our PyTorch engine) | llamacpp (.gguf files run by llama.cpp, as a tier with runtime llamacpp is served).")] = "torch",
    report: Annotated[Optional[Path], typer.Option(help="Also write an HTML report (add quality with --eval).")] = None,
    eval_files: Annotated[Optional[list[Path]], typer.Option("--eval", help="eval JSONs for the report's quality axis.")] = None,
) -> None:
    """Time prefill and decode of MODELS per batch size: TTFT, time per token, tokens/s, p50/p95, peak memory."""
    from compress.bench import bench as run
    from compress.bench import make_bench_config, parse_batch_sizes
    from compress.bench.table import bench_table
    from compress.evaluate.results import write_json_atomic
    cfg = make_bench_config(batch_sizes=parse_batch_sizes(batch_sizes), prompt_len=prompt_len, gen_len=gen_len,
                            device=device, repeats=repeats, warmup=warmup, threads=threads, decoder=decoder, runtime=runtime)
    if report is not None:
        from compress.report import check_inputs

        check_inputs(eval_files or [], [])
    result = run(models, cfg)
    write_json_atomic(output, result)
    console.print(bench_table(result))
    console.print(f"wrote {output}")
    if report is not None:
        from compress.report import write_report

        write_report(report, eval_files or [], [output])
        console.print(f"wrote {report}")
