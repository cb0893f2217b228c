#!/usr/bin/env bash
# GPU calls on one `nvidia-h200-x2` machine, one device call per step, each right after the last (the machine stays
# warm ~30 s; /tmp and detached processes live while it does). The SmolLM2 GGUF travels in three pieces
# (`split -n 3 -d` -> .part/model.gguf.0{0,1,2}); .whl holds ../shared/GPU.md's wheels (+ pypcre); .whl3 auto-round,
# hqq, termcolor, diskcache, compressed-tensors, loguru wheels and llama-cpp-python's package from `make llamacpp`; .gl/data the text
# (benchmarks/gpu_distill.py prepare's distill_train{,_noausten}.txt.xz, wiki.valid/test.tokens, austen5.txt.xz).
# Session 10 (issue 18's GPU recipe alone on GPU 1; issue 16's reference, seeds 1-2 and llama.cpp rows on GPU 0):
#   1. carry .whl .part/model.gguf.00         bash benchmarks/gpu_x2.sh setup
#   2. carry .gl .whl3 .part/model.gguf.01    bash benchmarks/gpu_x2.sh piece
#   3. carry .part/model.gguf.02              bash benchmarks/gpu_x2.sh go10
#   4. no carry, repeated                     bash benchmarks/gpu_x2.sh poll    ($OUT gets what has finished)
# Session 11-12 (issue 16's rows; kind nvidia-h200 is enough): setup, piece, then go16 instead of go10, then poll.
# Next: setup, piece, go17, poll (llama.cpp's Q4_K_M / Q4_1 rows; go16's llama step ran out of budget after F16).
# Earlier sessions' steps (scale, route, serve, go, go9, rescue9, trim9, bnb, recipe), which benchmarks/RESULTS.md
# cites, are in this file at commit 9c88114.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/parts /tmp/g/data "$OUT"
cp .part/model.gguf.* /tmp/parts/ 2>/dev/null
cp -r .gl/data/* /tmp/g/data/ 2>/dev/null
cp .gpudata/* /tmp/g/data/ 2>/dev/null
assemble() {
  [ -f /tmp/m/model.gguf ] && return
  mkdir -p /tmp/m && cat /tmp/parts/model.gguf.* > /tmp/m/model.gguf
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/m/model.gguf" | sha256sum -c -
}
reference_jobs() {  # SEED SPEC...: on GPU 0, detached, the reference then the table shards SPEC..., and the
  # llama.cpp rows of the reference and of shards B32/C32's artifacts (seed SEED) exported
  local seed=$1; shift
  CUDA_VISIBLE_DEVICES=0 OUT=/tmp/out_ref setsid nohup bash -c 'bash benchmarks/gpu_reference.sh model
      bash benchmarks/gpu_reference.sh rows "$@"' _ "$@" > /tmp/gpu0.log 2>&1 &
  CUDA_VISIBLE_DEVICES=0 OUT=/tmp/out_ref \
    ARTIFACTS="ours-gptq-g32=/tmp/ref/q/B32/gptq-ours-g32-s$seed ours-gptq-sym-g32=/tmp/ref/q/C32/gptq-ours-sym-g32-s$seed" \
    setsid nohup bash benchmarks/gpu_reference.sh llama > /tmp/llama0.log 2>&1 &
}
case $1 in
setup)
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site .whl/pypcre-*.tar.gz
  touch /tmp/site/.done
  if [ -z "${NO_MARLIN:-}" ]; then  # gptqmodel's Marlin kernel, a JIT build (~2 min), detached
    (cd /tmp && PYTHONPATH=/tmp/site GPTQMODEL_OFFLINE=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=24 setsid nohup python3 -c \
      "from gptqmodel import extension; extension.load(name='marlin_bf16')" > /tmp/marlin_build.log 2>&1 &)
  fi
  python3 -c "import torch, transformers, accelerate; print(torch.__version__, transformers.__version__, accelerate.__version__)"
  ls /tmp/parts ;;
piece)
  if [ -d .whl3 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl3/*.whl
    tar xJf .whl3/llama_cpp_pkg.tar.xz -C /tmp/site && (cd /tmp/site/llama_cpp/lib && for f in *.so.0; do ln -sf "$f" "${f%.0}"; done)
    PYTHONPATH=/tmp/site python3 -c "import llama_cpp, hqq, auto_round, compressed_tensors; print('llama_cpp', llama_cpp.__version__)" 2>&1 | tail -1
    lscpu | grep -i "model name\|^flags" | cut -c1-400
  fi
  ls /tmp/parts /tmp/g/data; tail -2 /tmp/marlin_build.log ;;
go10)  # GPU 1: recipes/gpu-quick.yaml alone, resumed until it finishes. GPU 0: the reference, then issue 16's
  # seeds 1-2 of our defaults and --sym (one row x group x seed per shard, two at a time), and llama.cpp's rows on the
  # host CPU: its Q4_0/Q4_1/Q4_K_M of the reference against our seed-1 g32 artifacts exported (Q4_1 and Q4_0)
  assemble || exit 1
  rm -rf /tmp/gq /tmp/ref; mkdir -p /tmp/out_recipe /tmp/ref /tmp/out_ref
  CUDA_VISIBLE_DEVICES=1 setsid nohup bash -c 'for _ in $(seq 30); do pgrep -f "marli[n]_bf16" > /dev/null || break
      sleep 5; done; for i in 1 2 3 4; do OUT=/tmp/out_recipe bash benchmarks/gpu_recipe.sh run \
      > /tmp/recipe.log 2>&1; grep -q "recipe finished" /tmp/recipe.log && break; done; echo done > /tmp/recipe.done' \
    > /tmp/gpu1.log 2>&1 &
  reference_jobs 1 "B32 gptq-ours 32 1" "C32 gptq-ours-sym 32 1" "B64 gptq-ours 64 1" "C64 gptq-ours-sym 64 1" \
      "B32b gptq-ours 32 2" "C32b gptq-ours-sym 32 2" "B64b gptq-ours 64 2" "C64b gptq-ours-sym 64 2"
  sleep ${WAIT_S:-400}; bash "$0" status ;;
go16)  # issue 16's remaining rows (one GPU is enough): the reference, our g32 defaults and --sym and --sym g64
  # (seed 0, three shards at once), then llama.cpp's Q4_0/Q4_1/Q4_K_M of the reference and the two g32 artifacts
  # exported, all scored by llama.cpp; and the --sym g64 artifact's compressed-tensors export (4.25 bits) scored
  assemble || exit 1
  rm -rf /tmp/ref; mkdir -p /tmp/ref /tmp/out_ref; touch /tmp/recipe.done  # no recipe in this lease
  export PARALLEL=3 THREADS=14; touch /tmp/ct.expected
  reference_jobs 0 "B32 gptq-ours 32 0" "C32 gptq-ours-sym 32 0" "C64 gptq-ours-sym 64 0"
  CUDA_VISIBLE_DEVICES=0 OUT=/tmp/out_ref CT_DIR=/tmp/ref/q/C64/gptq-ours-sym-g64-s0 \
    setsid nohup bash benchmarks/gpu_reference.sh ct > /tmp/ct0.log 2>&1 &
  sleep ${WAIT_S:-400}; bash "$0" status ;;
go17)  # issue 16's last rows (one GPU): the reference, its bf16 row and --bits-budget 4.5 on the symmetric default
  # (g64 base, seed 0); llama.cpp's Q4_K_M, Q4_1 and Q4_0 of it,
  # each scored first in PyTorch on the GPU (dequantized, seconds: --torch-rows; every text) and then by llama.cpp on
  # the host CPU after its F16 baseline, WikiText-2 and KL only (~3 min a row; Q4_0, measured in session 10, last)
  assemble || exit 1
  rm -rf /tmp/ref; mkdir -p /tmp/ref /tmp/out_ref; touch /tmp/recipe.done  # no recipe in this lease
  CUDA_VISIBLE_DEVICES=0 OUT=/tmp/out_ref setsid nohup bash -c 'bash benchmarks/gpu_reference.sh model
      bash benchmarks/gpu_reference.sh rows "A bf16 32 0" "Bud budget 64 0"' > /tmp/gpu0.log 2>&1 &
  CUDA_VISIBLE_DEVICES=0 OUT=/tmp/out_ref LLAMA_TYPES=q4_k_m,q4_1,q4_0 TORCH_ROWS=1 LLAMA_WIKI_ONLY=1 \
    THREADS=14 \
    setsid nohup bash benchmarks/gpu_reference.sh llama > /tmp/llama0.log 2>&1 &
  sleep ${WAIT_S:-400}; bash "$0" status ;;
poll)
  for _ in $(seq ${WAIT_N:-108}); do
    [ -f /tmp/recipe.done ] && grep -q "^llama rc" /tmp/ref/status 2>/dev/null && ! pgrep -f quality_ > /dev/null &&
      { [ ! -f /tmp/ct.expected ] || grep -q "^ct rc" /tmp/ref/status; } && break
    sleep 5
  done
  bash "$0" status ;;
status)  # what ran so far; results tarred into $OUT (at most 8 files come back)
  cat /tmp/ref/status 2>/dev/null; tail -2 /tmp/ref/model.log 2>/dev/null
  for f in /tmp/ref/*.log; do echo "== $f $(grep -c '"row"' "$f")"
    grep -v -i warn "$f" | tr '\r' '\n' | grep -i "error\|skipped\|Traceback" | tail -2; done
  echo "== recipe"; grep -v -i warn /tmp/gq-live.log 2>/dev/null | tr '\r' '\n' | grep -v "^\s*$" | tail -4 | cut -c1-200
  grep -v "^\s*$" /tmp/recipe.log 2>/dev/null | tail -8; cat /tmp/recipe.done 2>/dev/null
  (cd /tmp/out_ref 2>/dev/null && tar czf "$OUT/ref_results.tar.gz" . )
  (cd /tmp/out_recipe 2>/dev/null && tar czf "$OUT/gpu_quick.tar.gz" . )
  tar czf "$OUT/logs.tar.gz" /tmp/ref/*.log /tmp/recipe.log /tmp/gq-live.log /tmp/gpu0.log /tmp/gpu1.log \
    /tmp/llama0.log /tmp/ref/ct.log /tmp/ct0.log 2>/dev/null
  ls -la "$OUT"; nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader ;;
*)
  echo "usage: $0 setup|piece|go10|go16|go17|poll|status" >&2; exit 2 ;;
esac
