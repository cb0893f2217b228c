#!/usr/bin/env bash
# Issue 20 on the lent GPU, one device call per step (the machine stays warm ~30 s between calls, so send each
# call right after the last returns). The SmolLM2 GGUF travels in three pieces (.part/model.gguf.0{0,1,2},
# `split -n 3 -d`), one per call, next to the wheels of ../shared/GPU.md (.whl):
#   1. carry .whl .part/model.gguf.00:  bash benchmarks/gpu_engine.sh core-small   (SmolLM2 shape, all rows)
#   2. carry .whl .part/model.gguf.01:  bash benchmarks/gpu_engine.sh core-1b      (Llama-3.2-1B shape + quantized)
#   3. carry .part/model.gguf.02:       bash benchmarks/gpu_engine.sh http         (real SmolLM2 over HTTP)
# The routed-serving re-measure and the GPTQ rows, on a fresh machine:
#   carry .whl2 .gpudata .part/model.gguf.00: MAX_JOBS=16 bash benchmarks/gpu_engine.sh setup (Marlin builds, detached)
#   carry .part/model.gguf.01: bash benchmarks/gpu_engine.sh piece
#   carry .part/model.gguf.02: bash benchmarks/gpu_engine.sh route        (distil s4; GPTQ/int8-wo through the engine)
#   bash benchmarks/gpu_engine.sh route-bench                             (route_mixed.py on source + s4)
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false GPTQMODEL_OFFLINE=1 \
  TORCH_CUDA_ARCH_LIST=9.0
mkdir -p /tmp/parts /tmp/g/data && cp .part/model.gguf.* /tmp/parts/ 2>/dev/null
cp .gpudata/* /tmp/g/data/ 2>/dev/null
W=$(ls -d .whl2 .whl 2>/dev/null | head -1)  # .whl2: the slim set (serving + gptqmodel), .whl: ../shared/GPU.md's
if [ -n "$W" ] && [ ! -f /tmp/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $W/*.whl && touch /tmp/site/.done
  ls $W/pypcre-*.tar.gz >/dev/null 2>&1 && \
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site $W/pypcre-*.tar.gz
  # gptqmodel's Marlin kernel is a JIT build (~3 min): start it now, detached, so it is ready for the quantized rows.
  MAX_JOBS=${MAX_JOBS:-6} setsid nohup python3 -c "from gptqmodel import extension; extension.load(name='marlin_bf16')" \
    > /tmp/marlin_build.log 2>&1 &
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
q() { grep -v -i "warn\|^\s*$" | tail -${1:-40}; }
case $1 in
setup|piece) ls /tmp/parts; tail -2 /tmp/marlin_build.log ;;
route)  # the routed-serving re-measure (issue 6's recipe on the new engine): distil s4, then the bench
  mkdir -p /tmp/m && cat /tmp/parts/model.gguf.* > /tmp/m/model.gguf && sha256sum /tmp/m/model.gguf | cut -c1-64
  timeout 200 bash benchmarks/gpu_route.sh student s4 4 ${STEPS:-1247}
  tail -2 /tmp/marlin_build.log
  timeout 120 python3 benchmarks/gpu_engine.py quant --shape smollm2-shape --requests 1,32 --out $OUT/engine_quant_smollm2.json 2>&1 | q 8 ;;
route-bench)
  timeout 420 bash benchmarks/gpu_route.sh bench 0.8 ${RATES:-96,192,384} $OUT/route_mixed_cuda_engine.json s4 ;;
core-small)
  timeout 540 python3 benchmarks/gpu_engine.py core --shape smollm2-shape --out $OUT/engine_core_smollm2.json 2>&1 | q ;;
core-1b)
  timeout 300 python3 benchmarks/gpu_engine.py core --shape llama1b --rows hf_cb --out $OUT/engine_core_llama1b.json 2>&1 | q
  tail -2 /tmp/marlin_build.log
  timeout 240 python3 benchmarks/gpu_engine.py quant --shape smollm2-shape --requests 1,32 --out $OUT/engine_quant_smollm2.json 2>&1 | q ;;
http)
  cat /tmp/parts/model.gguf.* > /tmp/model.gguf && sha256sum /tmp/model.gguf | cut -c1-64
  timeout 500 python3 benchmarks/serve_load.py --device cuda --model /tmp/model.gguf --clients 1,8,32,64 --per-client 4 \
    --max-tokens 128 --out $OUT 2>&1 | q 30 ;;
esac
