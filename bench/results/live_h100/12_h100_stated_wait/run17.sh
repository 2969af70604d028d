#!/usr/bin/env bash
# run 17: as run 16, with the loop's lag out of the predicted batch latencies when planning ahead (into the
# deadline margin); otas, fixed:-20, fixed:-32 at loads 1, 1.5, 2; py-spy at load 2; the no-op overhead.
set -u
C="APPS=otas/configs/apps-h100.yaml FORMAT=otas-uint8 REPEAT=6 COALESCE_MS=5 SENDERS=4 PROFILE=.carry/h100_r12.json"
cp .carry/spywhl/*.whl .carry/whl/ 2>/dev/null
rm -rf /tmp/live; mkdir -p /tmp/w6
env $C "SERVE_ARGS=--http-workers 6" BUDGET_S=250 OUT=/tmp/w6 POLICIES="otas fixed:-20 fixed:-32" LOADS="1 1.5 2" \
  SPY=/tmp/site/bin/py-spy SPY_LOAD=2 timeout 400 bash scripts/gpu_serve_replay.sh > /tmp/w6/run.log 2>&1
echo "w6 done at $SECONDS s"
tar czf $OUT/w6.tgz -C /tmp w6 live
grep -v "^\s*$" /tmp/w6/run.log | tail -16; cat /tmp/w6/live.md 2>/dev/null | head -40; tail -9 /tmp/live/overhead.txt 2>/dev/null
for f in /tmp/live/metrics_otas_*_after.txt; do echo $f; grep -E "^otas_(delivery_seconds|decision_seconds_(count|sum))" $f; done
