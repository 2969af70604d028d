#!/usr/bin/env bash
# run 14: HTTP in 4 front-end processes (--http-workers 4, pixels through shared memory) fed by 4 sender
# processes: otas, fixed:-32, fixed:0 at loads 1, 1.5, 2 (latency profiled on an H100 in run 12, accuracies
# kept), py-spy over the engine process at load 2, the no-op overhead through the front ends; then otas with
# HTTP on the engine's own event loop (the same senders) at loads 1 and 2: side by side on one card.
set -u
C="APPS=otas/configs/apps-h100.yaml FORMAT=otas-uint8 REPEAT=6 COALESCE_MS=5 SENDERS=4 PROFILE=.carry/h100_r12.json"
cp .carry/spywhl/*.whl .carry/whl/ 2>/dev/null
rm -rf /tmp/live; mkdir -p /tmp/w4 /tmp/w0
env $C "SERVE_ARGS=--http-workers 4" BUDGET_S=230 OUT=/tmp/w4 POLICIES="otas fixed:-32 fixed:0" LOADS="1 1.5 2" \
  SPY=/tmp/site/bin/py-spy SPY_LOAD=2 timeout 330 bash scripts/gpu_serve_replay.sh > /tmp/w4/run.log 2>&1
echo "w4 done at $SECONDS s"
tar czf $OUT/w4.tgz -C /tmp w4 live
cat /tmp/w4/live.md 2>/dev/null | head -40; tail -9 /tmp/live/overhead.txt 2>/dev/null
rm -rf /tmp/live
env $C OVERHEAD=0 SERVE_ARGS= BUDGET_S=30 OUT=/tmp/w0 POLICIES="otas" LOADS="1 2" \
  timeout 110 bash scripts/gpu_serve_replay.sh > /tmp/w0/run.log 2>&1
echo "w0 done at $SECONDS s"
tar czf $OUT/w0.tgz -C /tmp w0 live
cat /tmp/w0/live.md 2>/dev/null | head -30
