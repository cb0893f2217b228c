#!/usr/bin/env bash
# Training-speed check for `compress distill --compile` and the micro-batch size (issue 4), on the GPU machine
# after the setup of benchmarks/gpu_distill.py (teacher at /tmp/m/model.gguf, text under /tmp/g/data).
# Same 16-layer SmolLM2 student (even layers), same global batch (32 x 1,024 tokens); prints each run's
# tokens/s over the whole loop and past its first 5 steps (tokens_per_s_steady: compile and warm-up excluded).
# Recorded run: benchmarks/results/distill_speed_gpu.json.
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 COMPRESS_CACHE=/tmp/cc PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
run() {  # name batch accum steps flags...
  n=$1; b=$2; a=$3; s=$4; shift 4
  t=$(date +%s)
  python3 -m compress distill /tmp/m/model.gguf --output /tmp/sp-$n --student-layers 16 --layer-selection even \
    --data /tmp/g/data/wiki.valid.tokens --seq-len 1024 --batch-size $b --grad-accum $a --max-steps $s --lr 1e-3 \
    --eval-tokens 8192 --overwrite --device cuda "$@" 2>&1 | grep -v -i warn | tr '\r' '\n' | grep -v "it/s\]$" | tail -2
  python3 -c "import json;m=json.load(open('/tmp/sp-$n/compress.json'))['metrics'];print('$n', {k:m[k] for k in ('tokens_per_s','tokens_per_s_steady','train_time_s','steps')}, 'wall', $(date +%s)-$t)"
}
run eager8 8 4 20
run comp8 8 4 30 --compile
run comp16 16 2 30 --compile
