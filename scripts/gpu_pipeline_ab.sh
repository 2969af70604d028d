#!/usr/bin/env bash
# The device path launching each batch behind the running one (`otas serve --launch-ahead`) against one batch at a
# time (`--no-launch-ahead`), on one GPU: first `bench/pipeline_check.py` (the same answers; the device
# thread's time per batch against the bare replay), then the model's own time here (`otas profile`, γ 0 and -32),
# then the server overhead with the model served (`bench/model_overhead.py`) for both settings, alternating, at
# γ = 0 (b = 1, 8, 64, 256) and γ = -32 (b = 64, 256). Results (≤ 8 files) under $OUT.
#
# Prepare here (once): `bash scripts/gpu_carry.sh` (the wheels the GPU image lacks); PROFILE: the accuracy source.
# Run on the GPU machine from the repository root, .carry/ carried:   bash scripts/gpu_pipeline_ab.sh
# (env CHECK=0: skip the check; GAMMAS="0": those γ only; one call of 600 s holds the check, the profile and one γ)
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results/pipeline}
mkdir -p "$OUT" /tmp/pl
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD OTAS_CACHE=/tmp/otas-cache
PROFILE=${PROFILE:-.carry/h100_r25_every4.json}
{ nvidia-smi --query-gpu=name,clocks.max.sm --format=csv; nproc; git log -1 --format='commit %h' 2>/dev/null; } \
  > "$OUT/machine.txt" 2>&1
if [ "${CHECK:-1}" = 1 ]; then
timeout 200 python3 bench/pipeline_check.py --out /tmp/pl/check > /tmp/pl/check.log 2>&1
echo "check rc=$? at $SECONDS s"; grep -v Warn /tmp/pl/check.log | tail -14
cp /tmp/pl/check/pipeline_check.json /tmp/pl/check/pipeline_check.png "$OUT/" 2>/dev/null
fi
timeout 150 python3 -m otas.cli profile otas/assets/vit_tiny_p2_c5.safetensors --device cuda --mode graphs \
  --gammas 0,-32 --batch-sizes 1,8,64,256 --min-time-s 0.4 --merge-every 4 --accuracy-from "$PROFILE" \
  --out /tmp/pl/model_time.json > /tmp/pl/profile.log 2>&1
echo "profile rc=$? at $SECONDS s"
MT=/tmp/pl/model_time.json; [ -f $MT ] || MT=$PROFILE
for G in ${GAMMAS:-0 -32}; do
  [ "$G" = 0 ] && B=1,8,64,256 || B=64,256
  for ARM in ahead serial; do
    SA="--http-workers 6"; [ $ARM = serial ] && SA="$SA --no-launch-ahead" || SA="$SA --launch-ahead"
    timeout 240 python3 bench/model_overhead.py --device cuda --profile "$MT" --apps otas/configs/apps-h100.yaml \
      --gamma "$G" --batches "$B" --serve-args "$SA" --otas "python3 -m otas.cli" --duration-s 4 \
      --out "/tmp/pl/g${G}_$ARM" > "/tmp/pl/g${G}_$ARM.log" 2>&1
    echo "gamma $G $ARM rc=$? at $SECONDS s"; grep -v Warn "/tmp/pl/g${G}_$ARM.log" | tail -6
  done
done
python3 - <<'EOF' > "$OUT/model_overhead_ab.json"
import glob, json
print(json.dumps({p.split("/")[-2]: json.load(open(p)) for p in sorted(glob.glob("/tmp/pl/g*/model_overhead.json"))}, indent=1))
EOF
tar czf "$OUT/pipeline_raw.tgz" -C /tmp pl
