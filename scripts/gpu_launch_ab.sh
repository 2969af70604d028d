#!/usr/bin/env bash
# Live replays of `otas` launching each batch behind the running one (`ahead`: `otas serve --launch-ahead`, the default) and one
# batch at a time (`serial`: `--no-launch-ahead`), at loads 2 and 1.5, each `otas` with its decision log. One round per
# call, the second in reverse order:
#   bash scripts/gpu_launch_ab.sh 1     then     bash scripts/gpu_launch_ab.sh 2     (one machine held;
#   LOADS_AB="2": that load alone; ARMS="ahead serial": those servers, in that order).
# Needs .carry/ (`bash scripts/gpu_carry.sh`) with the profile as .carry/h100_r25_every4.json, or PROF=<a file in
# .carry>. Writes $OUT/launch_<round>.tar.xz.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
R=$1
P=${PROF:-h100_r25_every4.json}
source scripts/replay_one.sh
rm -rf /tmp/launch; mkdir -p /tmp/launch
RES=/tmp/launch
A="$REPLAY PROFILE=$PWD/.carry/$P"
arm() {  # arm NAME LOADS: one server of the A/B, its results packed at once (a call cut short keeps them)
  case $1 in
    ahead) SERVE_EXTRA=" --launch-ahead" C=$A one . ahead-r$R otas "$2" ;;
    serial) SERVE_EXTRA=" --no-launch-ahead" C=$A one . serial-r$R otas "$2" ;;
  esac
  tar cJf $OUT/launch_$R.tar.xz -C /tmp launch
}
if [ "$R" = 1 ]; then L=${LOADS_AB:-2 1.5}; ORDER=${ARMS:-ahead serial}
else L=${LOADS_AB:-1.5 2}; ORDER=${ARMS:-serial ahead}; fi
for a in $ORDER; do arm "$a" "$L"; done
