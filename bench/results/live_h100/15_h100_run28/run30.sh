#!/usr/bin/env bash
# run 30 (issue 14): fixed:-16 twice and one more otas under each floor rule (this tree: judged as planned; the
# copy: judged when results came back), in turn, at loads 1 and 1.5; run 25's merge_every = 4 profile.
set -u
export PYTHONUNBUFFERED=1
C="APPS=otas/configs/apps-h100.yaml FORMAT=otas-uint8 REPEAT=6 COALESCE_MS=5 SENDERS=4 PROFILE=.carry/h100_r25_every4.json OVERHEAD=0"
rm -rf /tmp/old /tmp/r30; mkdir -p /tmp/r30; cp -r . /tmp/old; cp .carry/policies_floor_measured.py /tmp/old/otas/sched/policies.py
one() {  # one: TREE TAG POLICIES TIMEOUT
  rm -rf /tmp/live
  (cd "$1" && env $C "SERVE_ARGS=--http-workers 6" BUDGET_S=200 OUT=/tmp/r30/$2 POLICIES="$3" LOADS="1 1.5" ROUNDS=1 \
    timeout $4 bash scripts/gpu_serve_replay.sh > /tmp/r30/$2.log 2>&1)
  echo "$2 rc=$? at $SECONDS s"
  find /tmp/live -name "*.png" -delete 2>/dev/null; rm -f /tmp/r30/$2/live_raw.tgz; mv /tmp/live /tmp/r30/$2/raw
}
one . fixed-r1 fixed:-16 150
one . planned-r3 otas 105
one . fixed-r2 fixed:-16 105
one /tmp/old measured-r3 otas 105
tar cJf $OUT/r30.tar.xz -C /tmp r30
for d in /tmp/r30/*/; do echo "== $d"; sed -n 3,4p $d/live.md; grep -h "otas_floor_batches_total{" $d/raw/metrics_*after.txt 2>/dev/null; done
