#!/usr/bin/env bash
# run 32 (issue 14): otas with and without its floor (a copy of the tree with Otas(floor=False) as the default), in turn,
# twice, at loads 1.5 and 1; run 25's merge_every = 4 profile.
set -u
export PYTHONUNBUFFERED=1
C="APPS=otas/configs/apps-h100.yaml FORMAT=otas-uint8 REPEAT=6 COALESCE_MS=5 SENDERS=4 PROFILE=.carry/h100_r25_every4.json OVERHEAD=0"
rm -rf /tmp/r32 /tmp/old; mkdir -p /tmp/r32; cp -r . /tmp/old; cp .carry/policies_nofloor.py /tmp/old/otas/sched/policies.py
one() {  # one: TREE TAG POLICIES TIMEOUT LOADS
  rm -rf /tmp/live
  (cd "$1" && env $C "SERVE_ARGS=--http-workers 6" BUDGET_S=230 OUT=/tmp/r32/$2 POLICIES="$3" LOADS="$5" ROUNDS=1 \
    timeout $4 bash scripts/gpu_serve_replay.sh > /tmp/r32/$2.log 2>&1)
  echo "$2 rc=$? at $SECONDS s"
  find /tmp/live -name "*.png" -delete 2>/dev/null; rm -f /tmp/r32/$2/live_raw.tgz; mv /tmp/live /tmp/r32/$2/raw
}
one . floor-r1 otas 200 "1.5 1"
one /tmp/old nofloor-r1 otas 110 "1.5 1"
one . floor-r2 otas 110 "1.5 1"
one /tmp/old nofloor-r2 otas 110 "1.5 1"
tar cJf $OUT/r32.tar.xz -C /tmp r32
for d in /tmp/r32/*/; do echo "== $d"; sed -n '3,12p' $d/live.md; grep -h "otas_floor_batches_total{" $d/raw/metrics_*after.txt 2>/dev/null; done
