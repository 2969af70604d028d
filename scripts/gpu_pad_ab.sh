#!/usr/bin/env bash
# The scheduler planning at the batch buckets the CUDA-graph path pads to (`Profile.buckets`, the default)
# beside one planning at each batch's own size (a copy of this tree whose runner serves its profile
# without buckets, and the profile without them: the scheduler before buckets were known), and `fixed:-20`
# (the best live fixed γ at 1.5 on the H100, runs 29-34), at loads 1.5 and 1, each `otas` with its decision
# log. One round per call, the second in reverse order:
#   bash scripts/gpu_pad_ab.sh 1     then     bash scripts/gpu_pad_ab.sh 2     (one machine held;
#   LOADS_AB="1.5": that load alone; ARMS="aware f20": those servers alone, in that order).
# Needs .carry/ (`bash scripts/gpu_carry.sh`) with the profile as .carry/h100_r25_every4.json, or PROF=<a file in
# .carry>. Writes $OUT/pad_<round>.tar.xz.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
R=$1
P=${PROF:-h100_r25_every4.json}
source scripts/replay_one.sh
D=/tmp/unaware; variant $D
sed -i 's/        return profile.with_buckets(self.fast.cfg.buckets if self.mode in PER_SHAPE_MODES else None)/        return profile.with_buckets(None)/' $D/otas/engine/runner.py
grep -H "return profile.with_buckets" $D/otas/engine/runner.py
python3 -c "
import json; d = json.load(open('.carry/$P')); d.pop('buckets', None); json.dump(d, open('$D/.carry/unpadded.json', 'w'), indent=1)"
rm -rf /tmp/pad; mkdir -p /tmp/pad
RES=/tmp/pad
A="$REPLAY PROFILE=$PWD/.carry/$P"
U="$REPLAY PROFILE=$D/.carry/unpadded.json"
arm() {  # arm NAME LOADS: one server of the A/B, its results packed at once (a call cut short keeps them)
  case $1 in
    f20) C=$A one . f20-r$R fixed:-20 "$2" ;;
    unaware) C=$U one $D unaware-r$R otas "$2" ;;
    aware) C=$A one . aware-r$R otas "$2" ;;
  esac
  tar cJf $OUT/pad_$R.tar.xz -C /tmp pad
}
if [ "$R" = 1 ]; then L=${LOADS_AB:-1.5 1}; ORDER=${ARMS:-f20 unaware aware}
else L=${LOADS_AB:-1 1.5}; ORDER=${ARMS:-aware unaware f20}; fi
for a in $ORDER; do arm "$a" "$L"; done
