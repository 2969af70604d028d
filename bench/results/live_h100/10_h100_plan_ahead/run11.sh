#!/usr/bin/env bash
# run 11: this tree, plan-ahead on (default) for otas, fixed:0, fixed:-32 at 4 loads + the no-op overhead;
# then plan-ahead off for otas at loads 1 and 2. One card, latency reprofiled here, accuracies kept.
set -u
C="APPS=otas/configs/apps-h100.yaml FORMAT=otas-uint8 REPEAT=5 COALESCE_MS=5"
rm -rf /tmp/live; mkdir -p /tmp/ahead /tmp/noahead
env $C SERVE_ARGS=--decode-processes BUDGET_S=280 OUT=/tmp/ahead REPROFILE=1 PROFILE=.carry/vit_tiny_p2_c5__h100-graphs-uint8.json \
  PROFILE_OUT=vit_tiny_p2_c5__this-gpu-graphs-uint8.json POLICIES="otas fixed:-32 fixed:0" LOADS="0.5 1 1.5 2" \
  timeout 430 bash scripts/gpu_serve_replay.sh > /tmp/ahead/run.log 2>&1
echo "ahead done at $SECONDS s"; tail -18 /tmp/ahead/run.log
tar czf $OUT/ahead.tgz -C /tmp ahead
rm -rf /tmp/live
env $C OVERHEAD=0 "SERVE_ARGS=--decode-processes --no-plan-ahead" BUDGET_S=60 OUT=/tmp/noahead \
  PROFILE=/tmp/ahead/vit_tiny_p2_c5__this-gpu-graphs-uint8.json POLICIES="otas" LOADS="1 2" \
  timeout 100 bash scripts/gpu_serve_replay.sh > /tmp/noahead/run.log 2>&1
echo "noahead done at $SECONDS s"; tail -8 /tmp/noahead/run.log
tar czf $OUT/noahead.tgz -C /tmp noahead
cat /tmp/ahead/live.md /tmp/noahead/live.md 2>/dev/null | head -70
