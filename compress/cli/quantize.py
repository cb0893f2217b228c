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
    method: Annotated[Method, typer.Option(help="gptq | rtn | autoround (int4 packed, GPTQ format) | int8 (LLM.int8) | int8-wo (weight-only).")],
    bits: Annotated[Optional[int], typer.Option(help="Bits (gptq/rtn/autoround: 2,3,4,8; default 4). int8 methods: 8.")] = None,
    bits_budget: Annotated[Optional[float], typer.Option(help="gptq: average bits per weight (scales included, 4 < B <= 16); each layer gets 4 bits or stays 16 by measured sensitivity.")] = None,
    group_size: Annotated[Optional[int], typer.Option(help="gptq/rtn/autoround: columns per scale group (default 128); -1 = per output channel.")] = None,
    act_order: Annotated[Optional[bool], typer.Option("--act-order/--no-act-order", help="gptq: order columns by Hessian diagonal (default off).")] = None,
    sym: Annotated[Optional[bool], typer.Option("--sym/--asym", help="gptq/rtn/autoround: symmetric or asymmetric (zero-point) grid (default: sym; --asym for a source already on an asymmetric 4-bit grid, e.g. a Q4_1 GGUF).")] = None,
    damp: Annotated[Optional[float], typer.Option(help="gptq: fraction of mean(diag H) added to diag H (default 0.01).")] = None,
    mse: Annotated[Optional[float], typer.Option(help="gptq: search shrunk scales per group minimising sum |w_q - w|^P with this P (gptqmodel's mse; e.g. 2.0); 0 = max scale (default 2.0).")] = None,
    calib: Annotated[Optional[str], typer.Option(help="gptq/autoround: calibration data: .txt/.jsonl file or dir, dataset name, 'mix' (four offline domains; gptq's default) or 'builtin' (the Python docs; autoround's default).")] = None,
    calib_samples: Annotated[Optional[int], typer.Option(help="gptq/autoround: calibration sequences (default 128).")] = None,
    calib_seqlen: Annotated[Optional[int], typer.Option(help="gptq/autoround: tokens per calibration sequence (default 512).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="gptq/autoround: seed for calibration sampling (and auto-round's tuning) (default 0).")] = None,
    iters: Annotated[Optional[int], typer.Option(help="autoround: tuning steps per decoder block (default 200).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="autoround: learning rate (default: auto-round's, 1/iters).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
    quality: Annotated[bool, typer.Option("--quality/--no-quality", help="Measure held-out perplexity of the result.")] = True,
) -> None:
    """Quantize MODEL into a standard Hugging Face checkpoint plus compress.json.

    An option that does not apply to --method is refused before any model loads."""
    from compress.quantize import make_config
    from compress.quantize import quantize as run
    from compress.quantize.report import results_table

    cfg = make_config(method=method.value, bits=bits, bits_budget=bits_budget, group_size=group_size,
                      act_order=act_order, sym=sym, damp=damp, mse=mse, calib=calib, calib_samples=calib_samples,
                      calib_seqlen=calib_seqlen, seed=seed, iters=iters, lr=lr)
    result = run(model, cfg, output, overwrite=overwrite, device=device, measure_quality=quality)
    console.print(results_table([result]))
    console.print(f"wrote {result.output}")
