# bench/results/cpu_merge_every/pairs: the four CPU profiles, k = 1 and 4 alternating (run from the repository root)
set -u
cd "$(dirname "$0")/../../../.."
R=bench/results/gpu_merge_every/run25/vit_tiny_p2_c5__h100-fp32-every4.json
for round in 1 2; do
  for k in 1 4; do
    if [ $k = 1 ]; then A=profiles/vit_tiny_p2_c5__cpu-eager.json; else A=$R; fi
    .venv/bin/otas profile otas/assets/vit_tiny_p2_c5.safetensors --accuracy-from $A --min-time-s 2 --mode traced \
      --merge-every $k --out bench/results/cpu_merge_every/pairs/vit_tiny_p2_c5__cpu-every${k}-r$round.json
    echo "k=$k round $round rc=$? $(date)"
  done
done
