#!/usr/bin/env bash
# Server overhead with the model served, on one GPU (bench/model_overhead.py): the share of wall time that is not
# model time per batch size. First the model's own time on this machine (`otas profile`, every γ, the served path
# and merge schedule, accuracy reused from $PROFILE), then one server per (γ, b): fixed:γ --max-batch b with
# $HTTP_WORKERS front ends and a closed loop of raw-pixel requests of b images. Results (≤ 8 files) under $OUT.
#
# Prepare here (once): `bash scripts/gpu_carry.sh` (the wheels the GPU image lacks). Run on the GPU machine from the
# repository root, .carry/ carried:
#   bash scripts/gpu_model_overhead.sh   (env: OUT, PROFILE (accuracy source), MERGE_EVERY (its schedule, 4), APPS, GAMMAS (default "0 -32"),
#                                         BATCHES (default 1,8,64,256 at γ = 0 and 256 otherwise), HTTP_WORKERS (6))
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results/model_overhead}
mkdir -p "$OUT" /tmp/mo
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD OTAS_CACHE=/tmp/otas-cache
PROFILE=${PROFILE:-profiles/vit_tiny_p2_c5__h100-graphs.json}
APPS=${APPS:-otas/configs/apps-h100.yaml}
{ nvidia-smi --query-gpu=name,clocks.max.sm --format=csv; nproc; git log -1 --format='commit %h' 2>/dev/null; } \
  > "$OUT/machine.txt" 2>&1
timeout 300 python3 -m otas.cli profile otas/assets/vit_tiny_p2_c5.safetensors --device cuda --mode graphs \
  --batch-sizes 1,8,64,256 --min-time-s 0.5 --merge-every "${MERGE_EVERY:-4}" --accuracy-from "$PROFILE" \
  --out /tmp/mo/model_time.json \
  > /tmp/mo/profile.log 2>&1
echo "profile rc=$? at $SECONDS s"
MT=/tmp/mo/model_time.json
[ -f $MT ] && cp $MT "$OUT/" || MT=$PROFILE
for G in ${GAMMAS:-0 -32}; do
  B=${BATCHES:-}; [ -z "$B" ] && { [ "$G" = 0 ] && B=1,8,64,256 || B=256; }
  python3 bench/model_overhead.py --device cuda --profile "$MT" --apps "$APPS" --gamma "$G" --batches "$B" \
    --serve-args "--http-workers ${HTTP_WORKERS:-6}" --otas "python3 -m otas.cli" --duration-s 5 --out "/tmp/mo/g$G" \
    > "/tmp/mo/g$G.log" 2>&1
  echo "gamma $G rc=$? at $SECONDS s"; grep -v Warn "/tmp/mo/g$G.log" | tail -5
  cp "/tmp/mo/g$G/model_overhead.json" "$OUT/model_overhead_g$G.json" 2>/dev/null
  cp "/tmp/mo/g$G/model_overhead.png" "$OUT/model_overhead_g$G.png" 2>/dev/null
done
tar czf "$OUT/model_overhead_raw.tgz" -C /tmp mo
