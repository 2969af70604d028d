#!/usr/bin/env bash
# Live Azure-trace replay on one H100: `otas serve --device cuda` and the load generator on the same
# machine, over loopback, for OTAS, fixed:0 and the other baselines; results under $OUT.
#
# Prepare here (once), then run it on the GPU machine with .gpu/ uploaded beside the repository:
#   echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu
#   cp ../shared/data/cifar10-jpg.tar.gz ../shared/data/traces/AzureLLMInferenceTrace_conv.csv .gpu/
#   for w in starlette==1.10.0 uvicorn==0.54.0 python-multipart==0.0.34; do   # not in the GPU image
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform any -d .gpu/whl "$w"; done
#   cp checkpoints/<larger model>.safetensors .gpu/   # and, if measured, its H100 profile into profiles/
#   run: bash scripts/gpu_serve_replay.sh   (env: MODEL, PROFILE, POLICIES, SCALE, LIMIT)
set -euo pipefail
cd "$(dirname "$0")/.."
FINAL=${OUT:-bench/results}
OUT=/tmp/gpu_results   # everything here; $FINAL gets a tarball and the summary (the tool returns <= 8 files)
mkdir -p "$OUT" "$FINAL"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OTAS_CIFAR10=$PWD/.gpu/cifar10-jpg.tar.gz OTAS_CACHE=/tmp/otas-cache
OTAS="python3 -m otas.cli"
MODEL=${MODEL:-$(ls .gpu/*.safetensors | head -1)}
PROFILE=${PROFILE:-}
POLICIES=${POLICIES:-otas fixed:0 fixed:-16 edf clipper}
SCALE=${SCALE:-1.0}
LIMIT=${LIMIT:-20000}
APPS=${APPS:-otas/configs/apps-h100.yaml}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee "$OUT/gpu.txt"
if [ -z "$PROFILE" ]; then  # no H100 profile yet: measure one (latency at every γ, accuracy on 1000 images)
  PROFILE=$OUT/profile_h100.json
  $OTAS profile "$MODEL" --device cuda --batch-sizes 1,8,64,256 --accuracy-limit 1000 --min-time-s 0.5 --out "$PROFILE"
fi
for POLICY in $POLICIES; do
  TAG=${POLICY/:/}
  $OTAS serve --model "$MODEL" --profile "$PROFILE" --apps "$APPS" --device cuda --policy "$POLICY" \
    --max-batch 256 --port 8000 --log-level warning > "$OUT/serve_$TAG.log" 2>&1 &
  PID=$!
  for _ in $(seq 120); do curl -sf localhost:8000/v2/health/ready > /dev/null && break; sleep 1; done
  $OTAS bench replay --url http://127.0.0.1:8000 --trace "${TRACE:-.gpu/AzureLLMInferenceTrace_conv.csv}" \
    --load "$SCALE" --limit "$LIMIT" --out "$OUT" --tag "$TAG" 2>&1 | tee "$OUT/replay_$TAG.txt"
  curl -s localhost:8000/metrics > "$OUT/metrics_$TAG.txt"
  kill -TERM $PID; wait $PID || true
done
# Server overhead on this machine: no-op model, HTTP + scheduling + collation only.
$OTAS serve --noop --port 8001 --grpc-port 8002 --log-level warning > "$OUT/serve_noop.log" 2>&1 &
PID=$!
for _ in $(seq 60); do curl -sf localhost:8001/v2/health/ready > /dev/null && break; sleep 1; done
$OTAS bench overhead --url http://127.0.0.1:8001 --concurrency 128 --clients 4 --duration-s 10 --profile "$PROFILE" \
  --out "$OUT" | tee "$OUT/overhead.txt"
kill -TERM $PID; wait $PID || true
$OTAS bench summary "$OUT"/replay_*.json --out "$OUT/summary.md"
tar czf "$FINAL/gpu_serve_replay.tgz" -C /tmp gpu_results
cp "$OUT/summary.md" "$FINAL/gpu_summary.md"
