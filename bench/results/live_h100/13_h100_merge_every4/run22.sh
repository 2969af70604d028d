#!/usr/bin/env bash
# run 22 (issue 14): the live replay with the H100 profile of merge_every = 4 (run 21), on one machine: otas and the
# simulator's best fixed γ at loads 1 (fixed:-8) and 1.5 (fixed:-16), each policy twice (ROUNDS=2).
set -u
C="APPS=otas/configs/apps-h100.yaml FORMAT=otas-uint8 REPEAT=6 COALESCE_MS=5 SENDERS=4 PROFILE=.carry/h100_every4.json OVERHEAD=0"
rm -rf /tmp/live /tmp/r22; mkdir -p /tmp/r22
env $C "SERVE_ARGS=--http-workers 6" BUDGET_S=330 OUT=/tmp/r22 POLICIES="otas fixed:-8 fixed:-16" LOADS="1 1.5" ROUNDS=2 \
  timeout 500 bash scripts/gpu_serve_replay.sh > /tmp/r22/run.log 2>&1
echo "rc=$? at $SECONDS s"
rm -f /tmp/r22/live_raw.tgz; find /tmp/live -name "*.png" -delete 2>/dev/null
tar cJf $OUT/r22.tar.xz -C /tmp r22 live
cat /tmp/r22/live.md 2>/dev/null | head -30
