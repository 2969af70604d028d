#!/usr/bin/env bash
# The model-size ladder on one GPU machine, resumably over several calls of one warm machine:
#   1. a CIFAR ResNet teacher (`otas train teacher`);
#   2. a ViT backbone distilled from it (`otas train backbone --teacher`, resumes under BUDGET_S);
#   3. its γ = 0 heads and prompts for every γ > 0 on the application tasks (`otas train prompts`, resumes);
#   4. the fp16 checkpoint (the form models ship in), profiled with CUDA graphs (`otas profile --mode graphs`,
#      model_load_ms included), and the shipped Tiny model profiled the same way on the same machine;
#   5. the new model's accuracy in fp32 (for its CPU profile's `--accuracy-from`).
# A stage is skipped once its output is in runs/, and a stage starts only with enough of CALL_S left, so one
# command line can be sent again and again until it says "ladder complete". Results (logs, profiles, the
# checkpoint in 15 MB parts: `cat NAME.part-* > NAME`) go to $OUT: at most 4 files.
#
# Prepare here (once): the CIFAR-10 archive in the ignored .carry/, and the wheels of timm, typer, rich, click,
# shellingham, markdown-it-py, mdurl and pygments in .carry/whl (used only where the image lacks them; see
# scripts/gpu_serve_replay.sh for the `pip download` line). Run from the repository root, .carry carried:
#   ARCH=vit_small_p2 EPOCHS=200 bash scripts/gpu_ladder.sh
# (GROW_FROM=otas/assets/vit_tiny_p2_c5.safetensors starts the student as the shipped Tiny, widened.)
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
OUT=${OUT:-runs/ladder-out}
LOGS=runs/ladder   # logs and profiles, kept on the machine between calls; packed into $OUT/ladder.tgz
ARCH=${ARCH:-vit_small_p2}
EPOCHS=${EPOCHS:-200}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-200}
KD_WEIGHT=${KD_WEIGHT:-0.5}
KD_MODE=${KD_MODE:-soft}      # soft or hard (DeiT)
AUGMENT=${AUGMENT:-}          # "trivial": TrivialAugment for the teacher and the student; empty: crop, flip, mixing only
GROW_FROM=${GROW_FROM:-}      # a narrower trained checkpoint to grow the student from (`--grow-from`); empty: random init
SKIP_TINY=${SKIP_TINY:-}      # 1: do not re-profile the shipped Tiny model (its profile of this machine is committed)
PROMPT_EPOCHS=${PROMPT_EPOCHS:-6}
HEAD_EPOCHS=${HEAD_EPOCHS:-10}   # as the Tiny model's γ = 0 heads
CALL_S=${CALL_S:-560}     # this call's wall-time budget
NAME=${NAME:-${ARCH}_c5_kd}
BB=runs/$NAME.backbone.safetensors
FULL=runs/$NAME.safetensors
left() { echo $((CALL_S - (SECONDS - T0))); }
mkdir -p "$OUT" "$LOGS" runs/fp16
python3 -c "import timm, typer, rich" 2>/dev/null ||
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 COLUMNS=160 OTAS_CIFAR10=$PWD/.carry/cifar10-jpg.tar.gz \
  OTAS_CACHE=/tmp/otas-cache
OTAS="python3 -m otas.cli"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$LOGS/gpu.txt" 2>&1
if [ ! -f runs/teacher.safetensors ] && [ "$(left)" -gt 120 ]; then
  $OTAS train teacher --epochs "$TEACHER_EPOCHS" ${AUGMENT:+--augment "$AUGMENT"} --out runs/teacher.safetensors 2>&1 | tee -a "$LOGS/teacher.log"
fi
if [ ! -f "$BB" ] && [ "$(left)" -gt 90 ]; then
  $OTAS train backbone --arch "$ARCH" --epochs "$EPOCHS" --teacher runs/teacher.safetensors --kd-weight "$KD_WEIGHT" \
    --kd-mode "$KD_MODE" ${AUGMENT:+--augment "$AUGMENT"} ${GROW_FROM:+--grow-from "$GROW_FROM"} --time-budget-s $(($(left) - 60)) --out "$BB" 2>&1 | tee -a "$LOGS/backbone.log"
fi
prompts_done() { [ -f "$FULL" ] && python3 -c "
import sys; from otas.models.checkpoint import read_header
sys.exit(0 if 'val_accuracy' in read_header('$FULL')['meta'] else 1)"; }
if [ -f "$BB" ] && ! prompts_done && [ "$(left)" -gt 120 ]; then
  $OTAS train prompts "$BB" --epochs "$PROMPT_EPOCHS" --head-epochs "$HEAD_EPOCHS" --time-budget-s $(($(left) - 90)) \
    --out "$FULL" 2>&1 | tee -a "$LOGS/prompts.log"
fi
if prompts_done && [ ! -f "runs/fp16/$NAME.safetensors" ]; then
  python3 - "$FULL" "runs/fp16/$NAME.safetensors" <<'PY'
import sys, torch
from otas.models.checkpoint import load_checkpoint, read_header, save_checkpoint
save_checkpoint(load_checkpoint(sys.argv[1]), sys.argv[2], read_header(sys.argv[1])["meta"], dtype=torch.float16)
PY
fi
TARGETS=("runs/fp16/$NAME.safetensors")
[ -n "$SKIP_TINY" ] || TARGETS+=(otas/assets/vit_tiny_p2_c5.safetensors)
for m in "${TARGETS[@]}"; do
  p=runs/$(basename "$m" .safetensors)__h200-graphs.json
  if [ -f "$m" ] && [ ! -f "$p" ] && [ "$(left)" -gt 150 ]; then
    $OTAS profile "$m" --device cuda --batch-sizes 1,8,64,256 --mode graphs --out "$p" 2>&1 | tail -5 | tee -a "$LOGS/profile.log"
  fi
done
# fp32 accuracy of the new model, for its CPU profile (`otas profile --accuracy-from`): one short timing cell per γ
F32=runs/${NAME}__h200-fp32.json
if [ -f "runs/fp16/$NAME.safetensors" ] && [ ! -f "$F32" ] && [ "$(left)" -gt 90 ]; then
  $OTAS profile "runs/fp16/$NAME.safetensors" --device cuda --dtype float32 --batch-sizes 256 --min-time-s 0.2 --mode eager \
    --out "$F32" 2>&1 | tail -5 | tee -a "$LOGS/profile.log"
fi
cp runs/*__h200-graphs.json runs/*__h200-graphs.md runs/*__h200-fp32.json "$LOGS/" 2>/dev/null
tar czf "$OUT/ladder.tgz" -C runs ladder
if [ -f "runs/fp16/$NAME.safetensors" ]; then
  split -b 15000000 -d "runs/fp16/$NAME.safetensors" "$OUT/$NAME.safetensors.part-"
  [ -f "runs/${NAME}__h200-graphs.json" ] && { [ -n "$SKIP_TINY" ] || [ -f runs/vit_tiny_p2_c5__h200-graphs.json ]; } &&
    echo "ladder complete"
fi
ls -la runs "$OUT"
