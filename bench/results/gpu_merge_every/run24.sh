#!/usr/bin/env bash
# Run 24 (issues 11 and 14): merge steps of more than 4 blocks (k = 4, 6, 12) for the small |γ| that still miss
# 80 % of the limit, timed and Tiny's accuracy; then the live replay of run 22 again at load 1
# (otas, fixed:-16, two rounds) on this machine, as far as the device time goes.
set -uo pipefail
cd "$(dirname "$0")/.."
O=${OUT:-/tmp/out}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OTAS_CACHE=/tmp/otas-cache OTAS_CIFAR10=$PWD/.carry/cifar10-test.tar.gz
git log -1 --format=%H > "$O"/device_head.txt; nvidia-smi --query-gpu=name --format=csv,noheader >> "$O"/device_head.txt
V=triton+bias/every4/fusednorm,triton+bias/every6/fusednorm,triton+bias/every12/fusednorm
P=/tmp/gm24.jsonl; : > $P
timeout -k 5 55 python3 bench/gpu_merge.py time --model tiny --variants $V --gammas=-16,-12,-8 --batches 256,64,8 \
  --profile-batches 0 --budget-s 42 --out $P > /tmp/gm24.log 2>&1; echo "tiny rc=$? at ${SECONDS}s"
timeout -k 5 40 python3 bench/gpu_merge.py time --model arch:vit_small_p2 --variants $V --gammas=-12,-8 --batches 256,64 \
  --profile-batches 0 --budget-s 28 --out $P >> /tmp/gm24.log 2>&1; echo "small rc=$? at ${SECONDS}s"
timeout -k 5 40 python3 bench/gpu_merge.py time --model timm:vit_base_patch16_224 --variants $V --gammas=-8,-4 --batches 256,64 \
  --profile-batches 0 --budget-s 28 --out $P >> /tmp/gm24.log 2>&1; echo "vitb rc=$? at ${SECONDS}s"
timeout -k 5 45 python3 bench/gpu_merge.py accuracy --model tiny --variants $V --gammas=-20,-16,-12,-8 --limit 2500 \
  --budget-s 35 --out $P >> /tmp/gm24.log 2>&1; echo "accuracy rc=$? at ${SECONDS}s"
mkdir -p /tmp/gm24 && python3 bench/gpu_merge.py report $P --out-dir /tmp/gm24 > /tmp/gm24_report.log 2>&1
cp $P /tmp/gm24/gpu_merge.md "$O"/ 2>/dev/null; tar czf "$O"/gm24_logs.tgz /tmp/gm24.log /tmp/gm24_report.log 2>/dev/null
if ! nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H100; then echo "not an H100: no live run on the H100 profile"; exit 0; fi
C="APPS=otas/configs/apps-h100.yaml FORMAT=otas-uint8 REPEAT=6 COALESCE_MS=5 SENDERS=4 PROFILE=.carry/h100_every4.json OVERHEAD=0"
rm -rf /tmp/live /tmp/r24; mkdir -p /tmp/r24
env $C "SERVE_ARGS=--http-workers 6" BUDGET_S=90 OUT=/tmp/r24 POLICIES="otas fixed:-16" LOADS="1" ROUNDS=2 \
  timeout 150 bash scripts/gpu_serve_replay.sh > /tmp/r24/run.log 2>&1
echo "live rc=$? at ${SECONDS}s"
rm -f /tmp/r24/live_raw.tgz; find /tmp/live -name "*.png" -delete 2>/dev/null
tar cJf "$O"/r24.tar.xz -C /tmp r24 live
cat /tmp/r24/live.md 2>/dev/null | head -12
