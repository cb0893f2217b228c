"""Export compress artifacts to other runtimes' formats without re-quantizing.

- `compress.export.gguf`: `export_gguf(ARTIFACT, OUTPUT)` writes one GGUF file that llama.cpp,
  llama-cpp-python and ollama load (Llama-family models; layouts and exactness in its docstring).
- `compress.export.compressed`: `export_compressed_tensors(ARTIFACT, OUTPUT)` writes a compressed-tensors
  (pack-quantized) directory that vLLM and transformers load.
- `compress.export.source`: the artifact an export reads, and `ExportResult`.
- `compress.export.blocks`: the Q4_0 / Q4_1 / Q8_0 block encodings (pure maths).
- `compress.export.vocab`: GGUF metadata and tokenizer (copied from a GGUF source, or built from HF).
"""

from compress.export.compressed import export_compressed_tensors
from compress.export.gguf import export_gguf
from compress.export.source import ExportResult

__all__ = ["ExportResult", "export_compressed_tensors", "export_gguf"]
