#!/usr/bin/env bash
# run 18: side by side on one machine. A: this tree (the loop's lag planned as answers' delay, answers out
# before the next decision); B: the run-16 tree (4be65c8: the lag added to every predicted batch). otas
# and fixed:-20 (A), otas (B), otas (A again) at loads 1 and 1.5.
set -u
C="APPS=otas/configs/apps-h100.yaml FORMAT=otas-uint8 REPEAT=6 COALESCE_MS=5 SENDERS=4 PROFILE=.carry/h100_r12.json OVERHEAD=0"
rm -rf /tmp/b /tmp/live; mkdir -p /tmp/b /tmp/wa /tmp/wb /tmp/wa2
cp -r otas scripts /tmp/b/ && (cd /tmp/b && git apply "$OLDPWD/.carry/to_b16.patch") && ln -s "$PWD/.carry" /tmp/b/.carry
env $C "SERVE_ARGS=--http-workers 6" BUDGET_S=120 OUT=/tmp/wa POLICIES="otas fixed:-20" LOADS="1 1.5" \
  timeout 200 bash scripts/gpu_serve_replay.sh > /tmp/wa/run.log 2>&1
echo "A done at $SECONDS s"; tar czf $OUT/wa.tgz -C /tmp wa live; cat /tmp/wa/live.md | head -8; rm -rf /tmp/live
env $C "SERVE_ARGS=--http-workers 6" BUDGET_S=60 OUT=/tmp/wb POLICIES="otas" LOADS="1 1.5" \
  timeout 120 bash /tmp/b/scripts/gpu_serve_replay.sh > /tmp/wb/run.log 2>&1
echo "B done at $SECONDS s"; tar czf $OUT/wb.tgz -C /tmp wb live; cat /tmp/wb/live.md | head -8; rm -rf /tmp/live
env $C "SERVE_ARGS=--http-workers 6" BUDGET_S=60 OUT=/tmp/wa2 POLICIES="otas" LOADS="1 1.5" \
  timeout 120 bash scripts/gpu_serve_replay.sh > /tmp/wa2/run.log 2>&1
echo "A2 done at $SECONDS s"; tar czf $OUT/wa2.tgz -C /tmp wa2 live; cat /tmp/wa2/live.md | head -8
