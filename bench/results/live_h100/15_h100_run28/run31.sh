#!/usr/bin/env bash
# run 31 (issue 14): otas beside fixed:-16 and fixed:-20 at loads 1.5 and 2 on one machine, in turn, twice
# (the second round in reverse order); run 25's merge_every = 4 profile.
set -u
export PYTHONUNBUFFERED=1
C="APPS=otas/configs/apps-h100.yaml FORMAT=otas-uint8 REPEAT=6 COALESCE_MS=5 SENDERS=4 PROFILE=.carry/h100_r25_every4.json OVERHEAD=0"
rm -rf /tmp/r31; mkdir -p /tmp/r31
one() {  # one: TREE TAG POLICIES TIMEOUT LOADS
  rm -rf /tmp/live
  (cd "$1" && env $C "SERVE_ARGS=--http-workers 6" BUDGET_S=230 OUT=/tmp/r31/$2 POLICIES="$3" LOADS="$5" ROUNDS=1 \
    timeout $4 bash scripts/gpu_serve_replay.sh > /tmp/r31/$2.log 2>&1)
  echo "$2 rc=$? at $SECONDS s"
  find /tmp/live -name "*.png" -delete 2>/dev/null; rm -f /tmp/r31/$2/live_raw.tgz; mv /tmp/live /tmp/r31/$2/raw
}
one . a-r1 "otas fixed:-16 fixed:-20" 260 "1.5 2"
one . b-r2 "fixed:-20 fixed:-16 otas" 260 "2 1.5"
tar cJf $OUT/r31.tar.xz -C /tmp r31
for d in /tmp/r31/*/; do echo "== $d"; sed -n '3,12p' $d/live.md; grep -h "otas_floor_batches_total{" $d/raw/metrics_*after.txt 2>/dev/null; done
