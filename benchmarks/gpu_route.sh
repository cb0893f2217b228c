#!/usr/bin/env bash
# Issue 6 on the GPU machine, after the setup of benchmarks/gpu_distill.py (teacher at /tmp/m/model.gguf, WikiText-2
# under /tmp/g/data, wheels in /tmp/site). Two steps, one device call each:
#   bash benchmarks/gpu_route.sh student NAME LAYERS STEPS [SELECT_TOKENS]  # distil a student tier into /tmp/tiers/NAME
#   bash benchmarks/gpu_route.sh bench EASY_SHARE RATES OUT NAME...  # route_mixed.py on those tiers -> $OUT/...
# The student is distilled on sequence-continuation text like the workload's easy traffic
# (benchmarks/route_student_data.py, 1M lines, generated here) plus WikiText-2 valid x4, KD + 0.5 CE.
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 COMPRESS_CACHE=/tmp/cc PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
case $1 in
student)
  name=$2 layers=$3 steps=$4 select=${5:+--layer-select-tokens $5}
  [ -f /tmp/g/seq.txt ] || python3 benchmarks/route_student_data.py --out /tmp/g/seq.txt --lines 1000000
  w=/tmp/g/data/wiki.valid.tokens
  python3 -m compress distill /tmp/m/model.gguf --output /tmp/tiers/$name --student-layers $layers \
    --data /tmp/g/seq.txt --data $w --data $w --data $w --data $w --ce-weight 0.5 --seq-len 256 --batch-size 64 \
    --lr 1e-3 --warmup-steps 30 --max-steps $steps --eval-tokens 16384 --overwrite --device cuda $select 2>&1 \
    | grep -v -i warn | tr '\r' '\n' | grep -v "step\]$\|s/step" | tail -5
  python3 -c "import json;m=json.load(open('/tmp/tiers/$name/compress.json'))['metrics'];print('$name', {k: m[k] for k in ('steps','tokens_seen','tokens_per_s','teacher_ppl','student_ppl','kept_layers')})"
  python3 - /tmp/tiers/$name <<'PY'  # a quick look: greedy first word on the task's items, per family
import collections, json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
sys.path.insert(0, "benchmarks")
from route_mixed import TASK, first_word
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16).cuda()
hits = collections.defaultdict(list)
for row in map(json.loads, TASK.read_text().splitlines()):
    ids = tok(row["prompt"], return_tensors="pt").input_ids.cuda()
    out = model.generate(ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1]:]
    hits[row["kind"]].append(first_word(tok.decode(out, skip_special_tokens=True)) == row["answer"].lower())
print({k: f"{sum(v)}/{len(v)}" for k, v in hits.items()})
PY
  ;;
bench)
  share=$2 rates=$3 out=$4; shift 4
  args=(); for n in "$@"; do args+=(--student /tmp/tiers/$n --tier-name $n); done
  python3 benchmarks/route_mixed.py "${args[@]}" --source /tmp/m/model.gguf --device cuda --max-batch 32 \
    --rates $rates --seconds 8 ${POLICIES:+--policies $POLICIES} --easy-share $share --price-per-hour 3.0 --out $out 2>&1 | grep -v -i warn | tail -40 \
    || true
  for f in /tmp/route-mixed-*/*.log; do cp "$f" "${out%.json}_$(basename "$(dirname "$f")")_$(basename "$f")"; done
  ;;
esac
