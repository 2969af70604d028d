#!/usr/bin/env bash
# The online latency correction live on one GPU: `otas` with the factor and an offset per batch (the default,
# otas.sched.latency_fit) beside `otas` with the factor alone (a copy of this tree with
# SchedulerConfig(latency_model="factor") as the default) and `fixed:-20` (the best live fixed γ at 1.5 on the
# H100, runs 29-34), at loads 1 and 1.5, each `otas` with its decision log. One round per call, the second in
# reverse order:  bash scripts/gpu_latency_ab.sh 1   then   bash scripts/gpu_latency_ab.sh 2   (one machine held;
# LOADS_AB="1.5": that load alone).
# Needs .carry/ (`bash scripts/gpu_carry.sh`) with the profile as .carry/h100_r25_every4.json, or PROF=<a file in
# .carry>. Writes $OUT/lat_<round>.tar.xz.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
R=$1
source scripts/replay_one.sh
C="$REPLAY PROFILE=$PWD/.carry/${PROF:-h100_r25_every4.json}"
D=/tmp/factor; variant $D
sed -i 's/    latency_model: str = "affine"/    latency_model: str = "factor"/' $D/otas/config.py
grep -H "    latency_model: str" $D/otas/config.py otas/config.py
rm -rf /tmp/lat; mkdir -p /tmp/lat
RES=/tmp/lat
if [ "$R" = 1 ]; then
  L=${LOADS_AB:-1.5 1}; one . f20-r$R fixed:-20 "$L"; one /tmp/factor factor-r$R otas "$L"; one . affine-r$R otas "$L"
else
  L=${LOADS_AB:-1 1.5}; one . affine-r$R otas "$L"; one /tmp/factor factor-r$R otas "$L"; one . f20-r$R fixed:-20 "$L"
fi
tar cJf $OUT/lat_$R.tar.xz -C /tmp lat
