#!/usr/bin/env bash
# run 44 call: the tree of run 41 (5b5bc79), this tree one batch at a time, launching ahead, and fixed:-20, one machine
set -u
{ nvidia-smi --query-gpu=name,clocks.max.sm --format=csv; nproc; lscpu | grep "Model name"; } > $OUT/machine.txt 2>&1
cp otas/assets/vit_tiny_p2_c5.safetensors .carry/old41/otas/assets/
mkdir -p .carry/old41/.carry && ln -sfn $PWD/.carry/whl .carry/old41/.carry/whl
source scripts/replay_one.sh
RES=/tmp/pad; rm -rf $RES; mkdir -p $RES
C="$REPLAY PROFILE=$PWD/.carry/h100_r25_every4.json"
L=${LOADS_AB:-2 1.5 1}
for a in ${ARMS:-old41 serial ahead f20}; do
  case $a in
    old41) one .carry/old41 old41-r$R otas "$L" ;;
    serial) SERVE_EXTRA=" --no-launch-ahead" one . serial-r$R otas "$L" ;;
    ahead) SERVE_EXTRA=" --launch-ahead" one . ahead-r$R otas "$L" ;;
    f20) SERVE_EXTRA=" --no-launch-ahead" one . f20-r$R fixed:-20 "$L" ;;
  esac
  tar cJf $OUT/pad_$R.tar.xz -C /tmp pad
done
