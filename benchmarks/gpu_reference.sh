#!/usr/bin/env bash
# Issue 16 on the GPU machine: rebuild the bf16-trained reference model, then the int4 quality table on it.
# The model cannot go into git (~170 MB) nor come back from the device (16 MiB per file), so one lease rebuilds it
# and scores every row. benchmarks/gpu_x2.sh (steps setup, piece, go, bnb, poll) runs this; alone:
#   bash benchmarks/gpu_reference.sh chain     # model, then the table shards on GPU 0 (detached-friendly)
#   bash benchmarks/gpu_reference.sh peers     # the auto-round rows (GPU 1 of an x2 machine, after the recipe)
# Needs: the teacher GGUF at /tmp/m/model.gguf, the text in /tmp/g/data (distill_train_noausten.txt.xz from
# `benchmarks/gpu_distill.py prepare --names python_docs,python_stdlib,linux_docs,mobydick`, wiki.valid/test.tokens,
# austen5.txt.xz), the wheels in /tmp/site (gptqmodel, auto-round, hqq, bitsandbytes; llama-cpp-python's package).
#
# The reference: a 16-layer student of SmolLM2-135M-Instruct (greedy layers), distilled with forward KL in bf16
# autocast from the teacher's dequantized weights on the corpus WITHOUT Austen (so Austen is held-out prose for it)
# plus wiki.valid x10, lr 1e-3, MAX_TIME seconds; saved in bf16. Its weights leave the GGUF's Q4_1 grid
# (quality_table.py records model.q41_grid_share for it; the GGUF source's share is ~1).
# Rows score the whole WikiText-2 test file, the first 131,072 tokens of Austen (out of the reference's training
# text) and of the built-in Python docs' held-out split (in domain: the calibration text's domain); KL on 16,384
# Austen tokens. Calibration: `compress quantize`'s defaults (builtin, 128 x 512), seeds 0/1/2 where stated.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 GPTQMODEL_OFFLINE=1 TORCH_CUDA_ARCH_LIST=9.0 COMPRESS_CACHE=/tmp/cc PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
D=/tmp/g/data
REF=/tmp/ref/student-kd
Q=/tmp/ref/q
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" $Q
COMMON="--model $REF --device cuda --wikitext $D/wiki.test.tokens --heldout $D/austen5.txt.xz --heldout builtin
  --heldout-max-tokens 131072 --calib-samples 128 --calib-seqlen 512 --context 1024 --kl-tokens 16384"
shard() {  # NAME ROWS GROUPS SEEDS
  OMP_NUM_THREADS=${SHARD_THREADS:-3} python3 benchmarks/quality_table.py $COMMON --rows "$2" --groups "$3" --seeds "$4" \
    --work $Q/"$1" --out "$OUT/qt_$1.json" > /tmp/ref/"$1".log 2>&1
  echo "shard $1 rc $?" >> /tmp/ref/status
}
case $1 in
model)
  python3 benchmarks/gpu_distill.py run --mode kd --teacher /tmp/m/model.gguf --train $D/distill_train_noausten.txt.xz \
    --mix $D/wiki.valid.tokens --mix-repeat 10 --student-layers 16 --lr 1e-3 --max-time "${MAX_TIME:-330}" \
    ${MAX_STEPS:+--max-steps $MAX_STEPS} \
    --wikitext $D/wiki.test.tokens --work /tmp/ref --out "$OUT/reference_distill.json" > /tmp/ref/model.log 2>&1
  echo "model rc $?" >> /tmp/ref/status
  [ -f $REF/config.json ] && touch /tmp/ref/.model ;;
chain)
  mkdir -p /tmp/ref && bash "$0" model
  [ -f /tmp/ref/.model ] || exit 1
  shard A bf16,rtn,gptq-ours 128,32 0,1,2 &
  shard B gptq-gptqmodel 128,32 0,1,2 &
  shard C gptq-mse,gptq-asym,gptq-actorder 128,32 0 &
  shard D gptq-mix,gptq-best,budget 128,32 0 &
  shard H gptq-best 128,32 1,2 &
  shard E hqq,torchao-int4 128,32 0 &
  bash "$0" llama &
  for _ in $(seq 120); do [ -f /tmp/site/.bnb ] && break; sleep 5; done   # the bitsandbytes wheel comes in a later call
  shard N nf4 128 0
  wait ;;
llama)  # llama.cpp's quantizers and our GPTQ g32 (defaults) exported, run by llama.cpp on the host CPU
  python3 -m compress quantize $REF --method gptq --group-size 32 --device cuda -o $Q/ours-gptq-g32 --overwrite \
    > /tmp/ref/llama.log 2>&1
  python3 benchmarks/quality_llamacpp.py --model $REF --artifact gptq-ours-g32=$Q/ours-gptq-g32 \
    --wikitext $D/wiki.test.tokens --heldout $D/austen5.txt.xz --heldout builtin \
    --heldout-max-tokens 131072 --context 1024 --kl-tokens 16384 --threads 10 --device cuda --work /tmp/ref/gguf \
    --out "$OUT/qt_L.json" >> /tmp/ref/llama.log 2>&1
  echo "llama rc $?" >> /tmp/ref/status ;;
redo)  # session 8's second round after the CUDA load fix (models._from_pretrained): small shards on both GPUs
  pkill -f quality_table; sleep 2
  for spec in "0 A1 rtn,gptq-ours 128,32 0" "0 A2 gptq-ours 128 1,2" "0 A3 gptq-ours 32 1,2" "0 C1 gptq-mse 128,32 0" \
      "0 C2 gptq-asym 128,32 0" "0 C3 gptq-actorder 128,32 0" "1 B1 gptq-gptqmodel 128,32 0" "1 B2 gptq-gptqmodel 128 1,2" \
      "1 D1 gptq-mix 128,32 0" "1 D2 gptq-best 128,32 0" "1 D3 gptq-best 128 1,2" "1 D4 budget 128,32 0" \
      "1 F1 autoround-ours 128,32 0"; do
    set -- $spec; CUDA_VISIBLE_DEVICES=$1 OMP_NUM_THREADS=2 setsid nohup bash -c "$(declare -f shard); COMMON='$COMMON' \
      Q=$Q OUT=$OUT shard $2 $3 $4 $5" > /dev/null 2>&1 &
  done
  CUDA_VISIBLE_DEVICES=0 setsid nohup bash "$0" llama > /dev/null 2>&1 & ;;
chain9)  # session 9: the model rebuilt by steps (session 8's run reached 789 in its 330 s), then this session's rows
  mkdir -p /tmp/ref && MAX_STEPS=${MAX_STEPS:-789} bash "$0" model
  [ -f /tmp/ref/.model ] || exit 1
  for spec in "A bf16,rtn,rtn-asym 64,32 0" "B0 gptq-ours 64,32 0" "B1 gptq-ours 64,32 1" "B2 gptq-ours 64,32 2" \
      "C0 gptq-ours-sym 64,32 0" "C1 gptq-ours-sym 64,32 1" "C2 gptq-ours-sym 64,32 2" "D budget 64 0"; do
    set -- $spec; SHARD_THREADS=2 shard $1 $2 $3 $4 &
  done
  bash "$0" llama9 &
  wait ;;
llama9)  # llama.cpp's Q4_0/Q4_1/Q4_K_M of the reference against our GPTQ g32 (defaults: Q4_1; --sym: Q4_0) exported
  for v in "gptq-g32" "gptq-sym-g32 --sym"; do
    set -- $v; python3 -m compress quantize $REF --method gptq --group-size 32 ${2:-} --device cuda -o $Q/$1 \
      --overwrite >> /tmp/ref/llama.log 2>&1
  done
  python3 benchmarks/quality_llamacpp.py --model $REF --artifact ours-gptq-g32=$Q/gptq-g32 \
    --artifact ours-gptq-sym-g32=$Q/gptq-sym-g32 --llama-types q4_0,q4_1,q4_k_m --dense-type q8_0 \
    --wikitext $D/wiki.test.tokens --heldout $D/austen5.txt.xz --heldout builtin \
    --heldout-max-tokens 131072 --context 1024 --kl-tokens 16384 --threads 8 --device cuda --work /tmp/ref/gguf \
    --out "$OUT/qt_L.json" >> /tmp/ref/llama.log 2>&1
  echo "llama rc $?" >> /tmp/ref/status ;;
smol15)  # issue 15: SmolLM2 (the GGUF source) int4 g32 exported, against llama.cpp's own quantizers, whole WikiText-2
  S=/tmp/smol; mkdir -p $S
  for v in "gptq-sym-g32 gptq --sym" "gptq-g32 gptq" "rtn-g32 rtn"; do
    set -- $v; python3 -m compress quantize /tmp/m/model.gguf --method $2 --group-size 32 ${3:-} --device cuda \
      -o $S/$1 --overwrite >> /tmp/ref/smol.log 2>&1; echo "smol $1 rc $?" >> /tmp/ref/status
  done
  python3 benchmarks/quality_llamacpp.py --model /tmp/m/model.gguf --artifact ours-gptq-sym-g32=$S/gptq-sym-g32 \
    --artifact ours-gptq-g32=$S/gptq-g32 --artifact ours-rtn-g32=$S/rtn-g32 --llama-types q4_0,q4_1,q4_k_m \
    --dense-type q8_0 --wikitext $D/wiki.test.tokens --heldout $D/austen5.txt.xz --heldout-max-tokens 131072 \
    --context 512 --kl-tokens 16384 --threads 8 --device cuda --work $S/gguf --out "$OUT/smol_llamacpp.json" \
    >> /tmp/ref/smol.log 2>&1
  echo "smol rc $?" >> /tmp/ref/status ;;
rescue9)  # session 9, when GPTQ with the MSE search proved ~8 min per run under load: one run per shard, both GPUs
  for _ in $(seq 150); do [ -f /tmp/ref/.model ] && break; sleep 4; done
  [ -f /tmp/ref/.model ] || exit 1
  for spec in "0 A bf16,rtn,rtn-asym 64,32 0" "0 B64 gptq-ours 64 0" "0 B32 gptq-ours 32 0" "1 C64 gptq-ours-sym 64 0" \
      "1 C32 gptq-ours-sym 32 0" "1 D budget 64 0"; do
    set -- $spec; CUDA_VISIBLE_DEVICES=$1 SHARD_THREADS=2 shard $2 $3 $4 $5 &
  done
  CUDA_VISIBLE_DEVICES=0 python3 benchmarks/quality_llamacpp.py --model $REF --llama-types q4_0,q4_1,q4_k_m \
    --wikitext $D/wiki.test.tokens --heldout $D/austen5.txt.xz --heldout builtin \
    --heldout-max-tokens 131072 --context 1024 --kl-tokens 16384 --threads 6 --device cuda --work /tmp/ref/gguf \
    --out "$OUT/qt_L.json" >> /tmp/ref/llama.log 2>&1
  echo "llama rc $?" >> /tmp/ref/status
  wait ;;
smolscore)  # issue 15's scoring once the SmolLM2 GPTQ sym g32 run (smol15's first) has finished; plus RTN (fast)
  S=/tmp/smol
  CUDA_VISIBLE_DEVICES=1 python3 -m compress quantize /tmp/m/model.gguf --method rtn --group-size 32 --device cuda \
    -o $S/rtn-g32 --overwrite >> /tmp/ref/smol.log 2>&1; echo "smol rtn rc $?" >> /tmp/ref/status
  while pgrep -f "compress quantize /tmp/m/model.gguf --method gptq" > /dev/null; do sleep 3; done
  python3 benchmarks/quality_llamacpp.py --model /tmp/m/model.gguf --artifact ours-gptq-sym-g32=$S/gptq-sym-g32 \
    --artifact ours-rtn-g32=$S/rtn-g32 --llama-types q4_0,q4_1 \
    --dense-type q8_0 --wikitext $D/wiki.test.tokens --heldout $D/austen5.txt.xz --heldout-max-tokens 131072 \
    --context 512 --kl-tokens 16384 --threads 10 --device cuda --work $S/gguf --out "$OUT/smol_llamacpp.json" \
    >> /tmp/ref/smol.log 2>&1
  echo "smol rc $?" >> /tmp/ref/status ;;
peers)
  for _ in $(seq 200); do [ -f /tmp/ref/.model ] && break; sleep 5; done
  shard F autoround-ours 128,32 0 &
  shard G autoround 128,32 0 &
  wait ;;
*)
  echo "usage: $0 model|chain|llama|peers|chain9|llama9|smol15" >&2; exit 2 ;;
esac
