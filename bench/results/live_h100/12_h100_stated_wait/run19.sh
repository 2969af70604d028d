#!/usr/bin/env bash
# run 19: the final tree, load 1 only, on one machine: otas, fixed:-20, otas again (the repeat's spread).
set -u
C="APPS=otas/configs/apps-h100.yaml FORMAT=otas-uint8 REPEAT=6 COALESCE_MS=5 SENDERS=4 PROFILE=.carry/h100_r12.json OVERHEAD=0"
cp .carry/spywhl/*.whl .carry/whl/ 2>/dev/null
for step in "a otas" "b fixed:-20" "c otas"; do
  set -- $step
  rm -rf /tmp/live; mkdir -p /tmp/$1
  env $C "SERVE_ARGS=--http-workers 6" BUDGET_S=20 OUT=/tmp/$1 POLICIES="$2" LOADS="1" \
    timeout 75 bash scripts/gpu_serve_replay.sh > /tmp/$1/run.log 2>&1
  rm -f /tmp/$1/live_raw.tgz; find /tmp/live -name "*.png" -delete
  tar cJf $OUT/$1.tar.xz -C /tmp $1 live
  echo "$1 $2 at $SECONDS s"; tail -n +3 /tmp/$1/live.md 2>/dev/null | head -3
done
