#!/usr/bin/env bash
# Planning with the host's gap between batches (`otas`, the default) against measuring it only (`otas serve
# --no-host-gap`) and `fixed:-20` (the best live fixed γ on the H100), on one GPU: the live replay of
# scripts/replay_one.sh at loads 2, 1.5 and 1, each `otas` with its decision log (which records the measured
# gap, `host_gap_ms`). One round per call, the second in reverse order:
#   bash scripts/gpu_host_gap_ab.sh 1     then     bash scripts/gpu_host_gap_ab.sh 2     (one machine held;
#   LOADS_AB="2": that load alone; ARMS="nogap otas": those servers alone, in that order).
# Needs .carry/ (`bash scripts/gpu_carry.sh`) with the profile as .carry/h100_r25_every4.json, or PROF=<a file in
# .carry>. Writes $OUT/gap_<round>.tar.xz and $OUT/machine.txt.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
R=$1
P=${PROF:-h100_r25_every4.json}
{ nvidia-smi --query-gpu=name,clocks.max.sm --format=csv; nproc; lscpu | grep "Model name"; } > "$OUT/machine.txt" 2>&1
source scripts/replay_one.sh
RES=/tmp/gap; rm -rf $RES; mkdir -p $RES
C="$REPLAY PROFILE=$PWD/.carry/$P"
if [ "$R" = 1 ]; then L=${LOADS_AB:-2 1.5 1}; ORDER=${ARMS:-otas nogap f20}
else L=${LOADS_AB:-1 1.5 2}; ORDER=${ARMS:-f20 nogap otas}; fi
for a in $ORDER; do
  case $a in
    otas) one . otas-r$R otas "$L" ;;
    nogap) SERVE_EXTRA=" --no-host-gap" one . nogap-r$R otas "$L" ;;
    f20) one . f20-r$R fixed:-20 "$L" ;;
  esac
  tar cJf "$OUT/gap_$R.tar.xz" -C /tmp gap  # (a call cut short keeps what ran)
done
