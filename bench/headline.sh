#!/usr/bin/env bash
# Headline comparison of issue 3: every policy on the Azure trace and a synthetic step trace, load
# sweep 0.5-2x the capacity of gamma=0, with the real CPU and H100 profiles. Results JSON + plots
# under bench/results/headline/. Usage: bash bench/headline.sh  (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=bench/results/headline
run() {  # device apps.yaml max_batch profiles...
  local dev=$1 apps=$2 bmax=$3; shift 3
  local profs; profs=$(IFS=,; echo "$*")
  for trace in azure step; do
    $PY -c 'import typer; from otas.sim.cli import simulate; a = typer.Typer(); a.command("simulate")(simulate); a.command("_")(lambda: None); a()' \
      simulate --trace "$trace" --apps "$apps" --profile "$profs" --load 0.5,1,1.5,2 --seed 0 \
      --max-batch "$bmax" --json "$OUT/${dev}_${trace}.json" --plots "$OUT/${dev}_plots"
  done
}
shopt -s nullglob
cpu=(profiles/vit_tiny_p2_c5__*cpu*.json profiles/vit_small_p2_c5__*cpu*.json)
gpu=(profiles/vit_tiny_p2_c5__*H100*.json profiles/vit_small_p2_c5__*H100*.json)
if [ ${#cpu[@]} -gt 0 ]; then run cpu otas/configs/apps.yaml 64 "${cpu[@]}"; else echo "no CPU profiles in profiles/"; fi
if [ ${#gpu[@]} -gt 0 ]; then run h100 otas/configs/apps-h100.yaml 256 "${gpu[@]}"; else echo "no H100 profiles in profiles/"; fi
