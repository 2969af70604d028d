#!/usr/bin/env bash
# The smoothed price of device time live on one GPU, beside the stepped one and the best fixed γ (docs/scheduler.md,
# "A price that moves, not jumps"): loads 1.5 and 1, `fixed:-20` (the best live fixed γ at 1.5 on the H100, runs
# 29-31) and `otas` with the smoothed price and with the stepped one (copies of this tree with
# Otas(smooth_price=True) and =False as the default), each `otas` with its decision log (`bench/paced_drift.py` reads
# the live correction factor from it). One round per call, policies in turn, the second round in reverse:
#   bash scripts/gpu_price_ab.sh 1     (fixed, step, smooth)        bash scripts/gpu_price_ab.sh 2
# on one machine held between the calls. Needs .carry/ (`bash scripts/gpu_carry.sh`) with the profile as
# .carry/h100_r25_every4.json (bench/results/gpu_merge_every/run25/vit_tiny_p2_c5__h100-graphs-every4.json), or
# PROF=<a file in .carry> (a profile of the same machine). Writes $OUT/r34_<round>.tar.xz.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
R=$1
source scripts/replay_one.sh
C="$REPLAY PROFILE=$PWD/.carry/${PROF:-h100_r25_every4.json}"
for V in smooth:True step:False; do
  D=/tmp/${V%%:*}; variant $D
  sed -i "s/        smooth_price: bool = [A-Za-z]*,/        smooth_price: bool = ${V##*:},/" $D/otas/sched/policies.py
  grep -H "        smooth_price: bool" $D/otas/sched/policies.py
done
rm -rf /tmp/r34; mkdir -p /tmp/r34
RES=/tmp/r34
if [ "$R" = 1 ]; then
  one . f20-r1 fixed:-20 "1.5 1"; one /tmp/step step-r1 otas "1.5 1"; one /tmp/smooth smooth-r1 otas "1.5 1"
else
  one /tmp/smooth smooth-r2 otas "1 1.5"; one /tmp/step step-r2 otas "1 1.5"; one . f20-r2 fixed:-20 "1 1.5"
fi
tar cJf $OUT/r34_$R.tar.xz -C /tmp r34
