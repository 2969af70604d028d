#!/usr/bin/env bash
# Run 20 (issue 11): merge every k blocks (k = 1..4) beside each other, Tiny / Small / ViT-B/16, and Tiny's accuracy per k
set -uo pipefail
cd "$(dirname "$0")/.."
O=${OUT:-/tmp/out}
V=triton+column/fusednorm,triton+column/every2/fusednorm,triton+column/every3/fusednorm,triton+column/every4/fusednorm
export OTAS_CIFAR10=$PWD/.carry/cifar10-test.tar.gz
OUT=/tmp/gm20 PYTHON=python3 TOTAL_S=${TOTAL_S:-530} SKIP_SDPA=1 COMPILED="" VARIANTS=$V TINY_S=190 \
  TINY_ARGS="--gammas=-48,-32,-20,-16,-12,-8 --batches 256,64,8 --profile-batches 0" \
  ACC_S=90 ACC_VARIANTS=$V VITB_S=110 EXTRA="--limit 2500" \
  VITB_ARGS="--gammas=-16,-12,-8,-4 --batches 256,64,8 --profile-batches 0" SMALL=arch:vit_small_p2 SMALL_S=120 \
  SMALL_ARGS="--gammas=-48,-32,-20,-16,-12,-8 --batches 256,64,8 --profile-batches 0" TIMM_S=0 \
  bash scripts/gpu_merge_session.sh
cp /tmp/gm20/gpu_merge.json /tmp/gm20/gpu_merge.md /tmp/gm20/gpu_merge.png /tmp/gm20/gpu_merge_parts.jsonl /tmp/gm20/gpu_merge.log "$O"/ 2>/dev/null
git log -1 --format=%H > "$O"/device_head.txt
