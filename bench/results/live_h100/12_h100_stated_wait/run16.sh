#!/usr/bin/env bash
# run 16: as run 15 (6 front ends, stated waits, partial batches planned just before the running one ends),
# with deadlines planned short by the measured delivery time (p95); otas, fixed:-20, fixed:-32, fixed:0 at
# loads 1, 1.5, 2; py-spy at load 2; the no-op overhead. Then otas with --delivery-quantile 0 at loads 1, 1.5.
set -u
C="APPS=otas/configs/apps-h100.yaml FORMAT=otas-uint8 REPEAT=6 COALESCE_MS=5 SENDERS=4 PROFILE=.carry/h100_r12.json"
cp .carry/spywhl/*.whl .carry/whl/ 2>/dev/null
rm -rf /tmp/live; mkdir -p /tmp/w6 /tmp/q0
env $C "SERVE_ARGS=--http-workers 6" BUDGET_S=250 OUT=/tmp/w6 POLICIES="otas fixed:-20 fixed:-32 fixed:0" LOADS="1 1.5 2" \
  SPY=/tmp/site/bin/py-spy SPY_LOAD=2 timeout 400 bash scripts/gpu_serve_replay.sh > /tmp/w6/run.log 2>&1
echo "w6 done at $SECONDS s"
tar czf $OUT/w6.tgz -C /tmp w6 live
grep -v "^\s*$" /tmp/w6/run.log | tail -22; cat /tmp/w6/live.md 2>/dev/null | head -40; tail -9 /tmp/live/overhead.txt 2>/dev/null
grep -h "^otas_delivery_seconds " /tmp/live/metrics_*_after.txt 2>/dev/null | head -20
rm -rf /tmp/live
env $C OVERHEAD=0 "SERVE_ARGS=--http-workers 6 --delivery-quantile 0" BUDGET_S=30 OUT=/tmp/q0 POLICIES="otas" \
  LOADS="1 1.5" timeout 130 bash scripts/gpu_serve_replay.sh > /tmp/q0/run.log 2>&1
echo "q0 done at $SECONDS s"
tar czf $OUT/q0.tgz -C /tmp q0 live
cat /tmp/q0/live.md 2>/dev/null | head -30
