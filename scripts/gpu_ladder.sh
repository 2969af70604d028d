#!/usr/bin/env bash
# The model-size ladder on one GPU machine: a CIFAR ResNet teacher (`otas train teacher`), a ViT backbone
# distilled from it (`otas train backbone --teacher`), then the γ = 0 heads of the application tasks on the
# frozen backbone (`otas train prompts --gammas 0`: how well its features carry to tasks it never saw).
# Stages are skipped once their output is in runs/ (a warm machine keeps it), and the backbone resumes
# under BUDGET_S, so a long schedule runs over several calls of one machine.
#
# Prepare here (once): the CIFAR-10 archive in the ignored .carry/, and the wheels of timm, typer, rich, click,
# shellingham, markdown-it-py, mdurl and pygments in .carry/whl (used only where the image lacks them; see
# scripts/gpu_serve_replay.sh for the `pip download` line). Run from the repository root, .carry carried:
#   ARCH=vit_small_p2 EPOCHS=150 BUDGET_S=480 bash scripts/gpu_ladder.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/ladder}
ARCH=${ARCH:-vit_small_p2}
EPOCHS=${EPOCHS:-150}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-60}
KD_WEIGHT=${KD_WEIGHT:-0.5}
BUDGET_S=${BUDGET_S:-480}
NAME=${NAME:-${ARCH}_c5_kd}
mkdir -p "$OUT" runs
python3 -c "import timm, typer, rich" 2>/dev/null ||
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 COLUMNS=200 OTAS_CIFAR10=$PWD/.carry/cifar10-jpg.tar.gz \
  OTAS_CACHE=/tmp/otas-cache
OTAS="python3 -m otas.cli"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
git rev-parse HEAD >> "$OUT/gpu.txt" 2>/dev/null
if [ ! -f runs/teacher.safetensors ]; then
  $OTAS train teacher --epochs "$TEACHER_EPOCHS" --out runs/teacher.safetensors 2>&1 | tee -a "$OUT/teacher.log"
fi
BB=runs/$NAME.backbone.safetensors
if [ ! -f "$BB" ]; then
  $OTAS train backbone --arch "$ARCH" --epochs "$EPOCHS" --teacher runs/teacher.safetensors --kd-weight "$KD_WEIGHT" \
    --time-budget-s "$BUDGET_S" --out "$BB" 2>&1 | tee -a "$OUT/backbone.log"
fi
if [ -f "$BB" ] && [ ! -f "runs/$NAME.heads.safetensors" ]; then
  $OTAS train prompts "$BB" --gammas 0 --head-epochs 10 --out "runs/$NAME.heads.safetensors" 2>&1 | tee -a "$OUT/heads.log"
fi
if [ -f "$BB" ]; then  # the backbone in fp16 parts of 15 MB (`cat NAME.part-* > NAME` rebuilds it)
  python3 - "$BB" "/tmp/$NAME.backbone.fp16.safetensors" <<'PY'
import sys, torch
from otas.models.checkpoint import load_checkpoint, read_header, save_checkpoint
save_checkpoint(load_checkpoint(sys.argv[1]), sys.argv[2], read_header(sys.argv[1])["meta"], dtype=torch.float16)
PY
  split -b 15000000 -d "/tmp/$NAME.backbone.fp16.safetensors" "$OUT/$NAME.backbone.fp16.safetensors.part-"
fi
ls -la runs "$OUT"
