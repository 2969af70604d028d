#!/usr/bin/env bash
# run 28: (issue 11) proportional attention through FlexAttention beside the served Triton kernel and SDPA,
# attention alone; (issue 14) the live replay with the floor judging the policy's batches as planned, otas and
# fixed:-16 in turn at loads 1, 1.5 and 2, twice, on run 25's merge_every = 4 profile.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/device_head.txt 2>&1
timeout 130 python3 bench/gpu_merge.py sdpa --batches 256,64 --budget-s 110 --out $OUT/sdpa_flex.jsonl > $OUT/sdpa_flex.log 2>&1
echo "sdpa rc=$? at $SECONDS s"
C="APPS=otas/configs/apps-h100.yaml FORMAT=otas-uint8 REPEAT=6 COALESCE_MS=5 SENDERS=4 PROFILE=.carry/h100_r25_every4.json OVERHEAD=0"
rm -rf /tmp/live /tmp/r28; mkdir -p /tmp/r28
env $C "SERVE_ARGS=--http-workers 6" BUDGET_S=290 OUT=/tmp/r28 POLICIES="otas fixed:-16" LOADS="1 1.5 2" ROUNDS=2 \
  timeout 410 bash scripts/gpu_serve_replay.sh > /tmp/r28/run.log 2>&1
echo "live rc=$? at $SECONDS s"
rm -f /tmp/r28/live_raw.tgz; find /tmp/live -name "*.png" -delete 2>/dev/null
tar cJf $OUT/r28.tar.xz -C /tmp r28 live
cat /tmp/r28/live.md 2>/dev/null | head -30
grep -h "otas_floor_batches_total" /tmp/live/metrics_otas*after.txt 2>/dev/null | head -12
