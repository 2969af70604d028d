#!/usr/bin/env bash
# run 15: 6 front ends (each listening on its own socket), requests stating their wait (otas-waited-ms),
# partial batches planned just before the running one ends; fixed:0, fixed:-32, otas at loads 1, 1.5, 2;
# py-spy of the engine and front ends at load 2; the no-op overhead at max batch 256. Then otas with
# requests that do not state their wait (--no-state-wait) at loads 1 and 1.5, same card.
set -u
C="APPS=otas/configs/apps-h100.yaml FORMAT=otas-uint8 REPEAT=6 COALESCE_MS=5 SENDERS=4 PROFILE=.carry/h100_r12.json"
cp .carry/spywhl/*.whl .carry/whl/ 2>/dev/null
rm -rf /tmp/live; mkdir -p /tmp/w6 /tmp/nw
env $C "SERVE_ARGS=--http-workers 6" BUDGET_S=250 OUT=/tmp/w6 POLICIES="fixed:0 fixed:-32 otas" LOADS="1 1.5 2" \
  SPY=/tmp/site/bin/py-spy SPY_LOAD=2 timeout 350 bash scripts/gpu_serve_replay.sh > /tmp/w6/run.log 2>&1
echo "w6 done at $SECONDS s"
tar czf $OUT/w6.tgz -C /tmp w6 live
cat /tmp/w6/run.log | grep -v "^\s*$" | tail -25; cat /tmp/w6/live.md 2>/dev/null | head -40; tail -9 /tmp/live/overhead.txt 2>/dev/null
rm -rf /tmp/live
env $C OVERHEAD=0 "SERVE_ARGS=--http-workers 6" REPLAY_ARGS=--no-state-wait BUDGET_S=30 OUT=/tmp/nw POLICIES="otas" \
  LOADS="1 1.5" timeout 120 bash scripts/gpu_serve_replay.sh > /tmp/nw/run.log 2>&1
echo "nw done at $SECONDS s"
tar czf $OUT/nw.tgz -C /tmp nw live
cat /tmp/nw/live.md 2>/dev/null | head -30
