#!/usr/bin/env bash
# Issue 16 on the GPU machine: rebuild the bf16-trained reference model, then the int4 quality table on it.
# The model cannot go into git (~170 MB) nor come back from the device (16 MiB per file), so one lease rebuilds it
# and scores every row. benchmarks/gpu_x2.sh (steps setup, piece, go10, poll) runs this; alone:
#   bash benchmarks/gpu_reference.sh model                         # the reference (~7 min on one H200)
#   bash benchmarks/gpu_reference.sh rows "B32 gptq-ours 32 1" ... # table shards, at most $PARALLEL at once,
#                                                                  # one row x group x seed each (GPTQ with the MSE
#                                                                  # search: ~1.5 min alone, ~8 min when 7 share a GPU)
#   ARTIFACTS="ours-gptq-sym-g32=DIR ..." bash benchmarks/gpu_reference.sh llama   # llama.cpp rows (host CPU)
#   CT_DIR=$Q/C64/gptq-ours-sym-g64-s0 bash benchmarks/gpu_reference.sh ct   # its compressed-tensors export scored
#   bash benchmarks/gpu_reference.sh peers                         # the auto-round rows
# Earlier sessions' one-off steps (chain, redo, chain9, llama9, rescue9, smol15, smolscore), which
# benchmarks/RESULTS.md cites, are in this file at commit 9c88114.
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
wait_model() {  # the reference, built by `model` (possibly in another job); up to 20 min
  for _ in $(seq 300); do [ -f /tmp/ref/.model ] && return 0; sleep 4; done; return 1
}
wait_artifact() {  # DIR ($Q/SHARD/...): until it exists or its shard has ended without it; 0 if it exists
  local sh; sh=$(basename "$(dirname "$1")")
  for _ in $(seq 450); do
    [ -f "$1/compress.json" ] || grep -q "^shard $sh rc" /tmp/ref/status 2>/dev/null && break; sleep 4; done
  [ -f "$1/compress.json" ]
}
shard() {  # NAME ROWS GROUPS SEEDS
  OMP_NUM_THREADS=${SHARD_THREADS:-3} python3 benchmarks/quality_table.py $COMMON --rows "$2" --groups "$3" --seeds "$4" \
    --work $Q/"$1" --out "$OUT/qt_$1.json" > /tmp/ref/"$1".log 2>&1
  echo "shard $1 rc $?" >> /tmp/ref/status
}
case $1 in
model)  # MAX_STEPS=789 (the default) reproduces session 8's reference (bf16 WikiText-2 28.278 against 28.279)
  mkdir -p /tmp/ref
  python3 benchmarks/gpu_distill.py run --mode kd --teacher /tmp/m/model.gguf --train $D/distill_train_noausten.txt.xz \
    --mix $D/wiki.valid.tokens --mix-repeat 10 --student-layers 16 --lr 1e-3 --max-time "${MAX_TIME:-600}" \
    --max-steps "${MAX_STEPS:-789}" \
    --wikitext $D/wiki.test.tokens --work /tmp/ref --out "$OUT/reference_distill.json" > /tmp/ref/model.log 2>&1
  echo "model rc $?" >> /tmp/ref/status
  [ -f $REF/config.json ] && touch /tmp/ref/.model ;;
rows)  # "NAME ROWS GROUPS SEEDS" ...: waits for the model, then runs the shards, at most $PARALLEL (2) at once
  shift
  wait_model || exit 1
  for spec in "$@"; do
    while [ "$(jobs -rp | wc -l)" -ge "${PARALLEL:-2}" ]; do wait -n; done
    set -- $spec; SHARD_THREADS=2 shard $1 $2 $3 $4 &
  done
  wait ;;
llama)  # llama.cpp's own quantizers of the reference ($LLAMA_TYPES) and our artifacts exported ($ARTIFACTS:
  # NAME=DIR ..., waited for: a shard's work dir), all run by llama.cpp on the host CPU
  wait_model || exit 1
  args=()
  for a in ${ARTIFACTS:-}; do
    if wait_artifact "${a#*=}"; then args+=(--artifact "$a"); else echo "llama: no artifact $a (skipped)" >> /tmp/ref/status; fi
  done
  python3 benchmarks/quality_llamacpp.py --model $REF "${args[@]}" --llama-types "${LLAMA_TYPES:-q4_0,q4_1,q4_k_m}" \
    --dense-type q8_0 --wikitext $D/wiki.test.tokens --heldout $D/austen5.txt.xz --heldout builtin \
    --heldout-max-tokens 131072 --context 1024 --kl-tokens 16384 --threads "${THREADS:-12}" --device cuda \
    ${TORCH_ROWS:+--torch-rows} ${LLAMA_WIKI_ONLY:+--llama-wikitext-only} \
    --work /tmp/ref/gguf --out "$OUT/qt_L.json" >> /tmp/ref/llama.log 2>&1
  echo "llama rc $?" >> /tmp/ref/status ;;
ct)  # the compressed-tensors export of the artifact $CT_DIR (--sym g64: 4.25 bits), scored against it, whole WikiText-2
  wait_model || exit 1
  if wait_artifact "${CT_DIR:?}"; then
    python3 benchmarks/export_ct_check.py --artifact "$CT_DIR" --wikitext $D/wiki.test.tokens --device cuda \
      --kl-tokens 16384 --out "$OUT/ct_check.json" > /tmp/ref/ct.log 2>&1
    echo "ct rc $?" >> /tmp/ref/status
  else echo "ct rc 1 (no artifact $CT_DIR)" >> /tmp/ref/status; fi ;;
peers)
  wait_model || exit 1
  shard F autoround-ours 128,32 0 &
  shard G autoround 128,32 0 &
  wait ;;
*)
  echo "usage: $0 model|rows SPEC...|llama|peers" >&2; exit 2 ;;
esac
