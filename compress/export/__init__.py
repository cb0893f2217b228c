"""Export compress artifacts to other runtimes' formats without re-quantizing.

- `compress.export.gguf`: `export_gguf(ARTIFACT, OUTPUT)` writes one GGUF file that llama.cpp,
  llama-cpp-python and ollama load (Llama-family models; layouts and exactness in its docstring).
- `compress.export.blocks`: the Q4_0 / Q4_1 / Q8_0 block encodings (pure maths).
- `compress.export.vocab`: GGUF metadata and tokenizer (copied from a GGUF source, or built from HF).
"""

from compress.export.gguf import ExportResult, export_gguf

__all__ = ["ExportResult", "export_gguf"]
