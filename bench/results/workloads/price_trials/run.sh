#!/usr/bin/env bash
# Every trial of trials.py on the stored GPU sets of the suite (seeds 0-59 and 1000-1059, H100 and H200), and the
# shipped policy and `bslo` on the CPU set (seeds 0-59); from the repository root: bash bench/results/workloads/price_trials/run.sh
set -eu
D=bench/results/workloads/price_trials
for t in base tight full fast bslo bmax; do
  for s in h100 h100f h200 h200f; do
    .venv/bin/python $D/trials.py $t --suite bench/results/workloads/buckets/workloads_$s.json.xz --variants otas \
      --jobs 2 --out $D/${t}_$s.json > $D/${t}_$s.log 2>&1
    xz -f $D/${t}_$s.json
  done
done
for t in base bslo; do
  .venv/bin/python $D/trials.py $t --suite bench/results/workloads/workloads.json --sets cpu --variants otas \
    --jobs 2 --out $D/${t}_cpu.json > $D/${t}_cpu.log 2>&1
  xz -f $D/${t}_cpu.json
done
