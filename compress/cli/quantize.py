"""`compress quantize`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compress.cli import app, console
from compress.quantize.config import Method


@app.command()
def quantize(
    model: Annotated[str, typer.Argument(help="Model: checkpoint directory, hub id, .gguf file, or artifact.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Artifact directory to create.")],
    method: Annotated[Method, typer.Option(help="gptq | rtn (int4 packed) | int8 (LLM.int8) | int8-wo (weight-only).")],
    bits: Annotated[Optional[int], typer.Option(help="Bits (gptq/rtn: 2,3,4,8; default 4). int8 methods: 8.")] = None,
    group_size: Annotated[int, typer.Option(help="Columns per scale group; -1 = per output channel.")] = 128,
    act_order: Annotated[bool, typer.Option("--act-order/--no-act-order", help="GPTQ: order columns by Hessian diagonal.")] = False,
    sym: Annotated[bool, typer.Option("--sym/--asym", help="Symmetric or asymmetric (zero-point) grid.")] = True,
    damp: Annotated[float, typer.Option(help="GPTQ dampening: fraction of mean(diag H) added to diag H.")] = 0.01,
    calib: Annotated[Optional[str], typer.Option(help="Calibration data: .txt/.jsonl file or dir, dataset name, or 'builtin'.")] = None,
    calib_samples: Annotated[int, typer.Option(help="Calibration sequences.")] = 128,
    calib_seqlen: Annotated[int, typer.Option(help="Tokens per calibration sequence.")] = 512,
    seed: Annotated[int, typer.Option(help="Seed for calibration sampling.")] = 0,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
    quality: Annotated[bool, typer.Option("--quality/--no-quality", help="Measure held-out perplexity of the result.")] = True,
) -> None:
    """Quantize MODEL into a standard Hugging Face checkpoint plus compress.json."""
    from compress.quantize import make_config
    from compress.quantize import quantize as run
    from compress.quantize.report import results_table

    cfg = make_config(method=method.value, bits=bits, group_size=group_size, act_order=act_order, sym=sym,
                      damp=damp, calib=calib, calib_samples=calib_samples, calib_seqlen=calib_seqlen, seed=seed)
    result = run(model, cfg, output, overwrite=overwrite, device=device, measure_quality=quality)
    console.print(results_table([result]))
    console.print(f"wrote {result.output}")
