"""`compress export`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from compress.cli import app, console


class ExportFormat(str, Enum):
    gguf = "gguf"
    compressed_tensors = "compressed-tensors"


class DenseType(str, Enum):
    f16 = "f16"
    q8_0 = "q8_0"


@app.command()
def export(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory (GPTQ/RTN int4, int8-wo, or dense Llama checkpoint).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="What to write: FILE.gguf, or a directory for compressed-tensors.")],
    format: Annotated[ExportFormat, typer.Option("--format", help="Target format.")] = ExportFormat.gguf,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
    dense_type: Annotated[DenseType | None, typer.Option(help="GGUF only. Unquantized matrices (a GPTQ tier's embedding/output head): f16 as they are (default), or q8_0 re-quantized (llama.cpp's Q4_0 does this; smaller, faster; the change is printed).")] = None,
) -> None:
    """Write ARTIFACT in another runtime's format, as quantized, never re-quantized: GGUF for llama.cpp (GPTQ sym
    g32 -> Q4_0 exactly), or compressed-tensors (llm-compressor's pack-quantized, served by vLLM; a --sym GPTQ
    artifact has no zero points there, so g64 is 4.25 bits per weight)."""
    from compress.export import export_compressed_tensors, export_gguf

    if format is ExportFormat.compressed_tensors:
        if dense_type is not None:
            raise typer.BadParameter("--dense-type applies to --format gguf only", param_hint="--dense-type")
        result = export_compressed_tensors(artifact, output, overwrite=overwrite)
    else:
        result = export_gguf(artifact, output, overwrite=overwrite, dense_type=(dense_type or DenseType.f16).value)
    types = ", ".join(f"{n} {t}" for t, n in sorted(result.tensor_types.items()))
    console.print(f"wrote {result.output} ({result.file_type}, {result.size_bytes / 1e6:.1f} MB; tensors: {types})")
    console.print(f"tokenizer: {result.tokenizer}")
    if result.bits_per_weight:
        b = result.bits_per_weight
        console.print(f"decoder Linear bits per weight (from the files): {b['bits_per_weight']:.4f} "
                      f"(+ {b['shape_bits_per_weight']:.4f} for weight_shape)")
    for note in result.notes:
        console.print(f"note: {note}")
