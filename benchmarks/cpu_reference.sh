#!/usr/bin/env bash
# Issue 16 on a CPU: the int4 table with llama.cpp's quantizers at equal bits, on a bf16-trained model whose layers
# k-quants take (benchmarks/cpu_reference.py; the GPU reference is 576 wide, where Q4_K_M falls back to 5.55 bits).
#   bash benchmarks/cpu_reference.sh model   # train it (~25 min on 2 cores)
#   bash benchmarks/cpu_reference.sh rows    # our rows and RTN, in PyTorch (quality_table.py)
#   bash benchmarks/cpu_reference.sh llama   # llama.cpp's Q4_0/Q4_1/Q4_K_M and our GPTQ files exported to GGUF,
#                                            # each run by llama.cpp, and llama.cpp's files in PyTorch too
#   bash benchmarks/cpu_reference.sh dense   # llama.cpp's files with the embedding and head at Q8_0, in PyTorch
# DATA: the shared data folder (default ../shared/data); OUT_DIR: the work folder (default out/cpu-ref).
set -euo pipefail
DATA=${DATA:-../shared/data}
W=${OUT_DIR:-out/cpu-ref}
R=benchmarks/results
PY=${PY:-.venv/bin/python}
TEXTS="--wikitext $DATA/wikitext-2/wiki.test.tokens --heldout $DATA/corpus/austen5.txt.xz --heldout-max-tokens 65536
  --context 1024 --kl-tokens 16384"
case $1 in
model) $PY benchmarks/cpu_reference.py --data "$DATA" --out "$W" --record $R/cpu_reference.json ;;
rows)  # seed 0; the calibration is each row's default (compress quantize's: the offline mix, 128 x 512)
  $PY benchmarks/quality_table.py --model "$W/model" --device cpu --rows bf16,rtn,gptq-ours-sym,gptq-ours \
    --groups 128,32 --seeds 0 $TEXTS --work "$W/q" --out $R/quality_table_cpuref.json
  # --bits-budget 4.5 on the default (sym g128, 4.125 bits as stored): against uniform g32 (4.5 exported)
  $PY benchmarks/quality_table.py --model "$W/model" --device cpu --rows budget --groups 128 --seeds 0 $TEXTS \
    --work "$W/q" --out $R/quality_table_cpuref_budget.json ;;
llama)
  $PY benchmarks/quality_llamacpp.py --model "$W/model" --artifact ours-sym-g32="$W/q/gptq-ours-sym-g32-s0" \
    --artifact ours-asym-g32="$W/q/gptq-ours-g32-s0" --llama-types q4_0,q4_1,q4_k_m --dense-type q8_0 --torch-rows \
    --device cpu --threads "$(nproc)" $TEXTS --work "$W/gguf" --out $R/quality_table_cpuref_llamacpp.json ;;
dense)  # llama.cpp's quantizations again with the embedding and head at Q8_0 (as our exports), in PyTorch only
  $PY benchmarks/quality_llamacpp.py --model "$W/model" --llama-types q4_0,q4_1,q4_k_m --llama-dense-type q8_0 \
    --torch-only --device cpu $TEXTS --work "$W/gguf" --out $R/quality_table_cpuref_llamacpp_dense_q8.json ;;
*) echo "usage: $0 model|rows|llama|dense" >&2; exit 2 ;;
esac
