#!/usr/bin/env bash
# Headline comparison: every policy on the Azure trace and a synthetic step trace, load
# sweep 0.5-2x the capacity of gamma=0, with the real CPU and H200 profiles of the model-size ladder. Results JSON + plots
# under bench/results/headline/. Usage: bash bench/headline.sh  (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
OTAS=${OTAS:-.venv/bin/otas}
OUT=bench/results/headline
run() {  # device apps.yaml max_batch profiles...
  local dev=$1 apps=$2 bmax=$3; shift 3
  local profs; profs=$(IFS=,; echo "$*")
  for trace in azure step; do
    $OTAS simulate --trace "$trace" --apps "$apps" --profile "$profs" --load 0.5,1,1.5,2 --seed 0 \
      --max-batch "$bmax" --json "$OUT/${dev}_${trace}.json" --plots "$OUT/${dev}_plots"
  done
}
# the first profile is the served model; the second is the other size, for model-switch
run cpu otas/configs/apps.yaml 64 profiles/vit_tiny_p2_c5__cpu.json profiles/vit_small_p2_c5_grown__cpu.json
run h200 otas/configs/apps-h100.yaml 256 profiles/vit_tiny_p2_c5__h200-graphs.json profiles/vit_small_p2_c5_grown__h200-graphs.json
