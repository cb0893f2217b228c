#!/usr/bin/env bash
# Session 7's GPU calls on one `nvidia-h200-x2` machine: issue 18 (two GPUs, the GPU recipe) and issue 20 (routed
# serving on the new engine), one device call per step, each right after the last (the machine stays warm ~30 s;
# /tmp and detached processes live while it does). The SmolLM2 GGUF travels in three pieces (`split -n 3 -d`
# -> .part/model.gguf.0{0,1,2}); .whl holds ../shared/GPU.md's wheels (+ pypcre), .gl/data the text
# (benchmarks/gpu_distill.py prepare's distill_train.txt.xz, wiki.valid/test.tokens, austen5.txt.xz).
#   1. carry .whl .part/model.gguf.00   bash benchmarks/gpu_x2.sh setup   (wheels; Marlin JIT build, detached)
#   2. carry .gl .part/model.gguf.01    bash benchmarks/gpu_x2.sh piece
#   3. carry .part/model.gguf.02        bash benchmarks/gpu_x2.sh scale   (gpu_scale2.sh steps 1-5, both GPUs)
#   4. no carry                         bash benchmarks/gpu_x2.sh route   (GPU 0: s4 student + route_mixed.py;
#                                        GPU 1, detached: recipes/gpu-quick.yaml via gpu_recipe.sh run)
#   5. no carry                         bash benchmarks/gpu_x2.sh recipe  (waits for the recipe, collects it)
# The second lease (routed serving again, and the engine process against the engine thread):
#   1. carry .whl .gpudata .part/model.gguf.00   NO_MARLIN=1 bash benchmarks/gpu_x2.sh setup
#   2. carry .part/model.gguf.01                 bash benchmarks/gpu_x2.sh piece
#   3. carry .part/model.gguf.02                 bash benchmarks/gpu_x2.sh serve
#      (GPU 0: s4 student, then route_mixed.py auto vs source; GPU 1, detached meanwhile: serve_load.py engine thread
#       against engine process on the real weights, then gpu_engine.py's staggered row after the prefill warm-up)
# Session 8 (issue 16's reference and table on GPU 0, issue 18's GPU recipe on GPU 1, one lease):
#   1. carry .whl .part/model.gguf.00         bash benchmarks/gpu_x2.sh setup
#   2. carry .gl .whl3 .part/model.gguf.01    bash benchmarks/gpu_x2.sh piece  (.whl3: auto-round, hqq, termcolor,
#                                              diskcache wheels and llama-cpp-python's package from `make llamacpp`)
#   3. carry .part/model.gguf.02              bash benchmarks/gpu_x2.sh go     (both chains start detached)
#   4. carry .whlbnb                          bash benchmarks/gpu_x2.sh bnb    (bitsandbytes, 41 MiB, for the nf4 row)
#   5. no carry, repeated                     bash benchmarks/gpu_x2.sh poll   (waits; $OUT gets what is finished)
# Session 9 (issue 18's scaling, then issue 16's rows + issue 15's SmolLM2 llama.cpp rows on GPU 0, the recipe on GPU 1):
#   1. carry .whl .part/model.gguf.00         bash benchmarks/gpu_x2.sh setup
#   2. carry .gl .whl3 .part/model.gguf.01    bash benchmarks/gpu_x2.sh piece
#   3. carry .part/model.gguf.02              bash benchmarks/gpu_x2.sh go9
#   4. no carry, repeated                     bash benchmarks/gpu_x2.sh poll
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
    PYTHONPATH=/tmp/site python3 -c "import llama_cpp, hqq, auto_round; print('llama_cpp', llama_cpp.__version__)" 2>&1 | tail -1
    lscpu | grep -i "model name\|^flags" | cut -c1-400
  fi
  ls /tmp/parts /tmp/g/data; tail -2 /tmp/marlin_build.log ;;
scale)
  assemble || exit 1
  AUSTEN=/tmp/g/data/austen5.txt.xz SEL_TOKENS="2048 512 256" timeout 560 bash benchmarks/gpu_scale2.sh ;;
route)
  assemble || exit 1
  tail -2 /tmp/marlin_build.log
  rm -rf /tmp/gq; mkdir -p /tmp/out_recipe
  CUDA_VISIBLE_DEVICES=1 OUT=/tmp/out_recipe setsid nohup bash -c \
    'bash benchmarks/gpu_recipe.sh run > /tmp/recipe.log 2>&1; echo done > /tmp/recipe.done' > /dev/null 2>&1 &
  export CUDA_VISIBLE_DEVICES=0
  timeout 230 bash benchmarks/gpu_route.sh student s4 4 ${STEPS:-1000} ${SELECT_TOKENS:-512}
  timeout 300 bash benchmarks/gpu_route.sh bench 0.8 ${RATES:-96,192,384} $OUT/route_mixed_cuda_engine.json s4
  tail -5 /tmp/recipe.log ;;
serve)
  assemble || exit 1
  CUDA_VISIBLE_DEVICES=1 setsid nohup bash -c "export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1; \
    timeout 300 python3 benchmarks/serve_load.py --device cuda --model /tmp/m/model.gguf --modes thread,process \
      --clients 1,32,64 --per-client 4 --max-tokens 128 --baseline-requests 0 --out $OUT > /tmp/gil.log 2>&1; \
    timeout 150 python3 benchmarks/gpu_engine.py core --shape smollm2-shape --requests 1 --repeats 1 --rows staggered \
      --out $OUT/engine_staggered_smollm2.json >> /tmp/gil.log 2>&1; echo done > /tmp/gil.done" > /dev/null 2>&1 &
  export CUDA_VISIBLE_DEVICES=0
  timeout 170 bash benchmarks/gpu_route.sh student s4 4 ${STEPS:-600} ${SELECT_TOKENS:-256}
  POLICIES=auto,source timeout 250 bash benchmarks/gpu_route.sh bench 0.8 ${RATES:-96,192,384} \
    $OUT/route_mixed_cuda_engine.json s4
  for _ in $(seq 45); do [ -f /tmp/gil.done ] && break; sleep 2; done
  grep -v -i warn /tmp/gil.log | tr '\r' '\n' | grep -v "^\s*$" | tail -30
  (cd $OUT && tar czf logs.tar.gz *.log /tmp/gil.log 2>/dev/null; rm -f *.log; ls -la) ;;
go)
  assemble || exit 1
  rm -rf /tmp/gq /tmp/ref; mkdir -p /tmp/out_recipe /tmp/ref
  CUDA_VISIBLE_DEVICES=1 setsid nohup bash -c 'for _ in $(seq 30); do pgrep -f "marli[n]_bf16" > /dev/null || break; sleep 5; done
    for i in 1 2 3 4; do OUT=/tmp/out_recipe bash benchmarks/gpu_recipe.sh run > /tmp/recipe.log 2>&1
      grep -q "recipe finished" /tmp/recipe.log && break; done; echo done > /tmp/recipe.done
    OUT=/tmp/out_ref bash benchmarks/gpu_reference.sh peers' > /tmp/gpu1.log 2>&1 &
  CUDA_VISIBLE_DEVICES=0 OUT=/tmp/out_ref setsid nohup bash benchmarks/gpu_reference.sh chain > /tmp/gpu0.log 2>&1 &
  sleep ${WAIT_S:-530}; bash "$0" status ;;
go9)  # session 9: issue 18's scaling on both GPUs first (a speed run: nothing else on the GPUs), then, detached,
  # GPU 0: the reference + issue 16's rows (gpu_reference.sh chain9) and issue 15's SmolLM2 rows (smol15, llama.cpp on
  # the host CPU); GPU 1: recipes/gpu-quick.yaml (gpu_recipe.sh run, resumed until it finishes)
  assemble || exit 1
  rm -rf /tmp/gq /tmp/ref /tmp/smol; mkdir -p /tmp/out_recipe /tmp/ref /tmp/out_ref /tmp/out_scale
  for _ in $(seq 30); do pgrep -f "marli[n]_bf16" > /dev/null || break; sleep 5; done
  OUT=/tmp/out_scale ONLY=1 STEPS=${STEPS:-60} RUNS="1 2 2:ddp:1" timeout ${SCALE_S:-300} bash benchmarks/gpu_scale2.sh
  cp /tmp/out_scale/*.json "$OUT/" 2>/dev/null
  CUDA_VISIBLE_DEVICES=1 setsid nohup bash -c 'for i in 1 2 3 4; do OUT=/tmp/out_recipe bash benchmarks/gpu_recipe.sh run \
      > /tmp/recipe.log 2>&1; grep -q "recipe finished" /tmp/recipe.log && break; done; echo done > /tmp/recipe.done' \
    > /tmp/gpu1.log 2>&1 &
  CUDA_VISIBLE_DEVICES=0 OUT=/tmp/out_ref setsid nohup bash benchmarks/gpu_reference.sh chain9 > /tmp/gpu0.log 2>&1 &
  CUDA_VISIBLE_DEVICES=0 OUT=/tmp/out_ref setsid nohup bash benchmarks/gpu_reference.sh smol15 > /tmp/smol0.log 2>&1 &
  sleep ${WAIT_S:-200}; bash "$0" status ;;
rescue9)  # session 9: GPTQ with the MSE search took ~8 min per run under load; the recipe (GPU 1) showed no progress.
  # Stop the recipe and chain9 before its 8 two-run shards, and start one run per shard on both GPUs instead.
  tail -3 /tmp/gpu1.log; grep -v -i warn /tmp/recipe.log | tr '\r' '\n' | grep -v "^\s*$" | tail -4
  pkill -f "gpu_recipe.sh"; pkill -f "compress run"; pkill -f "gpu_reference.sh chain9"; pkill -f "gpu_reference.sh smol15"
  sleep 1
  OUT=/tmp/out_ref setsid nohup bash benchmarks/gpu_reference.sh rescue9 > /tmp/rescue.log 2>&1 &
  OUT=/tmp/out_ref setsid nohup bash benchmarks/gpu_reference.sh smolscore > /tmp/smolscore.log 2>&1 &
  sleep ${WAIT_S:-150}; cat /tmp/ref/status; pgrep -fc "[q]uality_table"; tail -c 200 /tmp/ref/smol.log
  nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader ;;
trim9)  # chain9 had already started its 8 shards and llama9 when rescue9 ran: keep rescue9's, stop the rest
  pkill -f "gpu_reference.sh llama9"; pkill -f "compress quantize /tmp/ref/student-kd"
  for w in B0 B1 B2 C0 C1 C2; do pkill -f -- "--work /tmp/ref/q/$w "; done
  for w in A D; do o=$(pgrep -o -f -- "python3 benchmarks/quality_table.py .*--work /tmp/ref/q/$w "); [ -n "$o" ] && kill $o; done
  sleep ${WAIT_S:-5}; pgrep -af "quality_table|quality_llamacpp|compress quantize" | cut -c1-160
  nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader ;;
bnb)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whlbnb/*.whl \
    && touch /tmp/site/.bnb
  sleep ${WAIT_S:-540}; bash "$0" status ;;
poll)
  for _ in $(seq ${WAIT_N:-108}); do
    [ -f /tmp/recipe.done ] && grep -q "^llama rc" /tmp/ref/status 2>/dev/null && ! pgrep -f quality_ > /dev/null && break
    sleep 5
  done
  bash "$0" status ;;
status)  # what ran so far; results tarred into $OUT (at most 8 files come back)
  cat /tmp/ref/status 2>/dev/null; tail -3 /tmp/ref/model.log 2>/dev/null; grep -v -i warn /tmp/ref/smol.log 2>/dev/null | tail -3
  for f in /tmp/ref/[A-Z].log; do echo "== $f"; grep -c '"row"' "$f"; grep -v -i warn "$f" | tr '\r' '\n' | grep -i "error\|skipped" | tail -2; done
  grep -v "^\s*$" /tmp/recipe.log 2>/dev/null | tail -8; cat /tmp/recipe.done 2>/dev/null
  (cd /tmp/out_ref 2>/dev/null && tar czf "$OUT/ref_results.tar.gz" . )
  (cd /tmp/out_recipe 2>/dev/null && tar czf "$OUT/gpu_quick.tar.gz" . )
  tar czf "$OUT/logs.tar.gz" /tmp/ref/*.log /tmp/recipe.log /tmp/gpu0.log /tmp/gpu1.log /tmp/smol0.log 2>/dev/null
  ls -la "$OUT"; nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader ;;
recipe)
  for _ in $(seq ${WAIT:-110}); do [ -f /tmp/recipe.done ] && break; sleep 5; done
  grep -v "^\s*$" /tmp/recipe.log | tail -40
  if ! grep -q "recipe finished" /tmp/recipe.log; then  # cut at 560 s: one more stretch, resumed
    CUDA_VISIBLE_DEVICES=1 OUT=/tmp/out_recipe timeout 500 bash benchmarks/gpu_recipe.sh run
  fi
  cd /tmp/out_recipe && tar czf "$OUT/gpu_quick.tar.gz" . && ls -la "$OUT" ;;
esac
