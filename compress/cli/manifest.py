"""`compress manifest`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compress.cli import app, console


@app.command()
def manifest(
    models: Annotated[list[str], typer.Argument(help="Checkpoint/artifact dirs, .gguf files, or URL#MODEL_ID for a remote OpenAI-compatible endpoint.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Manifest file to write (YAML).")],
    price_per_gpu_hour: Annotated[Optional[float], typer.Option(help="Price of one GPU-hour, for tiers benchmarked on CUDA.")] = None,
    price_per_cpu_hour: Annotated[Optional[float], typer.Option(help="Price of one CPU machine-hour, for tiers benchmarked on CPU.")] = None,
    name: Annotated[Optional[list[str]], typer.Option("--name", help="NAME=MODEL: the tier name for MODEL (default: its folder name).")] = None,
    cost: Annotated[Optional[list[str]], typer.Option("--cost", help="NAME=COST: cost per 1k tokens set by hand.")] = None,
    api_key_env: Annotated[Optional[list[str]], typer.Option("--api-key-env", help="NAME=ENVVAR: env var holding a remote tier's API key.")] = None,
    currency: Annotated[str, typer.Option(help="Currency of prices and costs.")] = "USD",
    slo: Annotated[Optional[list[str]], typer.Option("--slo", help="CLASS=SECONDS: p95 end-to-end target for a traffic class (interactive, batch).")] = None,
    router: Annotated[Optional[Path], typer.Option("--router", help="router.json from `compress router train`: `auto` routes by each tier's predicted success.")] = None,
    gguf: Annotated[Optional[list[str]], typer.Option("--gguf", help="NAME=FILE.gguf: tier NAME runs on llama.cpp from FILE, a `compress export --format gguf` of its artifact (its speed: `compress bench FILE --runtime llamacpp` as the tier's bench.json).")] = None,
    eval_file: Annotated[Optional[list[str]], typer.Option("--eval", help="NAME=FILE: the tier's quality from an eval JSON (for a remote tier: `compress eval URL#MODEL --output FILE`).")] = None,
) -> None:
    """Write a tier manifest: one tier per model, cheapest first, with its measured quality, speed and cost."""
    from compress.manifest import build_manifest, write_manifest

    m = build_manifest(models, names=name or [], costs=cost or [], api_key_envs=api_key_env or [],
                       price_per_gpu_hour=price_per_gpu_hour, price_per_cpu_hour=price_per_cpu_hour,
                       currency=currency, slos=slo or [], router=router, evals=eval_file or [], ggufs=gguf or [])
    write_manifest(m, output)
    for t in m.tiers:
        cost_s = "unknown" if t.cost_per_1k_tokens is None else f"{t.cost_per_1k_tokens:.6g} {m.currency}/1k tok"
        where = getattr(t, "path", None) or f"{t.url} ({t.model})"
        if getattr(t, "gguf", None):
            where += f" on llama.cpp ({t.gguf})"
        console.print(f"{t.name}: {t.kind}, {where}, cost {cost_s}", highlight=False)
    if m.router is not None:
        console.print(f"router: {router}", highlight=False)
    console.print(f"wrote {output}")
