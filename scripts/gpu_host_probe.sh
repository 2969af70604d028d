#!/usr/bin/env bash
# Where a live replay's time goes on a GPU machine's host. For each server (the model on the GPU, and
# the no-op model paced to the same profile: the host alone at the GPU's speed) and each policy, one
# replay of the Azure conv trace at $LOAD, with py-spy sampling the server's threads for 3 s of it and
# the server's batch metrics before and after; also the served path's host-I/O tests and bench/gil.py
# (a batch alone and beside a busy Python thread). Results (≤ 8 files) under $OUT.
#
# Prepare here (once): `GRPC=0 bash scripts/gpu_carry.sh` (the wheels, the data, py-spy in .carry/tools/).
# Run (on the GPU machine, from the repository root, .carry/ carried):
#   bash scripts/gpu_host_probe.sh   (env: OUT, PROFILE, APPS, LOAD, POLICIES, FORMAT, REPEAT, COALESCE_MS, SERVE_ARGS)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/probe}
W=/tmp/probe_w
mkdir -p "$OUT" "$W"
T0=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/whl/*.whl .carry/testwhl/*.whl \
  .carry/tools/*.whl 2>&1 | grep -v "already exists" | tail -2
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OTAS_CIFAR10=$PWD/.carry/cifar10-test.tar.gz OTAS_CACHE=/tmp/otas-cache
OTAS="python3 -m otas.cli"
SPY=/tmp/site/bin/py-spy
PROFILE=${PROFILE:-profiles/vit_tiny_p2_c5__h100-graphs.json}
APPS=${APPS:-otas/configs/apps-h100.yaml}
LOAD=${LOAD:-0.5}
POLICIES=${POLICIES:-fixed:0 otas}
TRACE=${TRACE:-.carry/AzureLLMInferenceTrace_conv.csv}
python3 -m pytest -q -p no:cacheprovider -m gpu tests/adapt/test_fast.py -k host_io 2>&1 | tail -60 > "$OUT/host_io_tests.txt"
echo "host_io tests at $((SECONDS - T0))s"
python3 bench/gil.py --device cuda --rounds 2 --gammas 0 --batches 64,256 --out "$W/gil" > "$W/gil.log" 2>&1
cp "$W/gil/gil_cuda.json" "$OUT/" 2>/dev/null
echo "gil at $((SECONDS - T0))s"
for MODE in gpu paced; do
  ARGS=(--device cuda)
  [ "$MODE" = paced ] && ARGS=(--noop --paced)
  for POLICY in $POLICIES; do
    TAG=${MODE}_${POLICY/:/}
    $OTAS serve "${ARGS[@]}" --profile "$PROFILE" --apps "$APPS" --policy "$POLICY" --max-batch 256 ${SERVE_ARGS:-} \
      --port 8000 --grpc-port 0 --log-level warning > "$W/serve_$TAG.log" 2>&1 &
    PID=$!
    for _ in $(seq 120); do curl -sf localhost:8000/v2/health/ready > /dev/null && break; sleep 1; done
    curl -s localhost:8000/metrics > "$W/metrics_${TAG}_before.txt"
    $OTAS bench replay --url http://127.0.0.1:8000 --trace "$TRACE" --load "$LOAD" --limit 0 --out "$W" \
      --coalesce-ms "${COALESCE_MS:-5}" --format "${FORMAT:-otas-uint8}" --repeat "${REPEAT:-5}" --tag "$TAG" \
      > "$W/replay_$TAG.txt" 2>&1 &
    REP=$!
    for _ in $(seq 300); do grep -q "replaying against" "$W/replay_$TAG.txt" && break; sleep 0.2; done
    $SPY record --pid $PID --duration 3 --rate 250 --threads --format raw -o "$W/spy_$TAG.txt" > /dev/null 2>&1
    $SPY record --pid $PID --duration 2 --rate 250 --threads --gil --format raw -o "$W/spy_gil_$TAG.txt" > /dev/null 2>&1
    wait $REP
    curl -s localhost:8000/metrics > "$W/metrics_${TAG}_after.txt"
    kill -TERM $PID; wait $PID
    echo "$TAG at $((SECONDS - T0))s: $(grep -c . "$W/spy_$TAG.txt") stacks"
  done
done
tar czf "$OUT/probe_raw.tgz" -C /tmp probe_w
ls -la "$OUT"
