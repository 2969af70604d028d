#!/usr/bin/env bash
# Does a decision's host time cost a fixed γ its utility live? `fixed:-20` as it is, and in copies of this tree
# whose `Fixed.choose` first spins for 0.5 and 1 ms of Python (holding the GIL, as the scheduler's own work does):
# about what `otas` decides in beyond a fixed γ live (0.62-0.64 ms against 0.10-0.15 ms per decision,
# otas_decision_seconds, bench/results/live_h100/19_h100_runs37_40). Loads 1 and 1.5. One round per call;
# ARMS sets the servers and their order (default "f20 pad05 pad10 f20b"), LOADS_AB the loads ("1 1.5"):
#   bash scripts/gpu_decision_pad_ab.sh 1
# Needs .carry/ (`bash scripts/gpu_carry.sh`) with the profile as .carry/h100_r25_every4.json, or PROF=<a file in
# .carry>. Writes $OUT/decpad_<round>.tar.xz.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
R=$1
P=${PROF:-h100_r25_every4.json}
source scripts/replay_one.sh
spin() {  # spin DIR MS: a copy of the tree whose fixed γ spins MS ms per decision
  variant $1
  python3 - "$1/otas/sched/baselines.py" "$2" <<'PY'
import sys
p, ms = sys.argv[1], float(sys.argv[2])
s = open(p).read()
old = "    def choose(self, cands: list[Candidate], now_ms: float, view: View) -> Choice:\n        ok = view.servable("
assert s.count(old) == 1
new = ("    def choose(self, cands: list[Candidate], now_ms: float, view: View) -> Choice:\n"
       f"        import time\n        t_end = time.perf_counter() + {ms / 1000!r}\n"
       "        while time.perf_counter() < t_end:\n            pass\n        ok = view.servable(")
open(p, "w").write(s.replace(old, new))
PY
  grep -q "t_end = time.perf_counter()" $1/otas/sched/baselines.py || { echo "the spin patch did not apply to $1" >&2; exit 1; }
}
spin /tmp/pad05 0.5
spin /tmp/pad10 1.0
rm -rf /tmp/pad; mkdir -p /tmp/pad
RES=/tmp/pad
C="$REPLAY PROFILE=$PWD/.carry/$P"
for a in ${ARMS:-f20 pad05 pad10 f20b}; do
  case $a in
    f20) one . f20-r$R fixed:-20 "${LOADS_AB:-1 1.5}" ;;
    f20b) one . f20b-r$R fixed:-20 "${LOADS_AB:-1 1.5}" ;;
    pad05) one /tmp/pad05 pad05-r$R fixed:-20 "${LOADS_AB:-1 1.5}" ;;
    pad10) one /tmp/pad10 pad10-r$R fixed:-20 "${LOADS_AB:-1 1.5}" ;;
  esac
  tar cJf $OUT/decpad_$R.tar.xz -C /tmp pad
done
