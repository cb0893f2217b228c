"""`compress export`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from compress.cli import app, console


class ExportFormat(str, Enum):
    gguf = "gguf"


class DenseType(str, Enum):
    f16 = "f16"
    q8_0 = "q8_0"


@app.command()
def export(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory (GPTQ/RTN int4, int8-wo, or dense Llama checkpoint).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write (FILE.gguf).")],
    format: Annotated[ExportFormat, typer.Option("--format", help="Target format.")] = ExportFormat.gguf,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
    dense_type: Annotated[DenseType, typer.Option(help="Unquantized matrices (a GPTQ tier's embedding/output head): f16 as they are, or q8_0 re-quantized (llama.cpp's Q4_0 does this; smaller, faster; the change is printed).")] = DenseType.f16,
) -> None:
    """Write ARTIFACT in another runtime's format, as quantized (GPTQ sym g32 -> Q4_0 exactly), never re-quantized."""
    from compress.export import export_gguf

    result = export_gguf(artifact, output, overwrite=overwrite, dense_type=dense_type.value)
    types = ", ".join(f"{n} {t}" for t, n in sorted(result.tensor_types.items()))
    console.print(f"wrote {result.output} ({result.file_type}, {result.size_bytes / 1e6:.1f} MB; tensors: {types})")
    console.print(f"tokenizer: {result.tokenizer}")
    for note in result.notes:
        console.print(f"note: {note}")
