"""compress: make large language models cheaper and faster to serve.

The library behind the `compress` CLI. Each concern has one home:
- `models`     resolve and load a model from a directory, hub id, .gguf file or artifact
- `artifacts`  the artifact folder format (HF checkpoint + compress.json), written atomically
- `data`       text sources (local files, datasets, the built-in offline default) and token blocks
- `quantize`   int8 (bitsandbytes), int8 weight-only (torchao), int4 GPTQ and RTN (gptqmodel)
- `evaluate`   perplexity and lm-evaluation-harness tasks
"""

__version__ = "0.1.0"
