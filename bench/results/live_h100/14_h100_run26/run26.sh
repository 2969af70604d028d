#!/usr/bin/env bash
# run 26 (issue 14): the live replay on run 25's merge_every = 4 profile (same kind of machine), otas and fixed:-16 at
# loads 1, 1.5 and 2, in turn, twice (ROUNDS=2), as far as the budget goes.
set -u
C="APPS=otas/configs/apps-h100.yaml FORMAT=otas-uint8 REPEAT=6 COALESCE_MS=5 SENDERS=4 PROFILE=.carry/h100_r25_every4.json OVERHEAD=0"
rm -rf /tmp/live /tmp/r26; mkdir -p /tmp/r26
env $C "SERVE_ARGS=--http-workers 6" BUDGET_S=300 OUT=/tmp/r26 POLICIES="otas fixed:-16" LOADS="1 1.5 2" ROUNDS=2 \
  timeout 420 bash scripts/gpu_serve_replay.sh > /tmp/r26/run.log 2>&1
echo "rc=$? at $SECONDS s"
rm -f /tmp/r26/live_raw.tgz; find /tmp/live -name "*.png" -delete 2>/dev/null
tar cJf $OUT/r26.tar.xz -C /tmp r26 live
cat /tmp/r26/live.md 2>/dev/null | head -30
