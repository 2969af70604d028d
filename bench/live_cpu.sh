#!/usr/bin/env bash
# Live replay on this CPU with the shipped default model: the same server, one policy per run,
# the Azure trace at SCALE x the gamma=0 capacity, first LIMIT requests; the simulator's prediction
# for the same workload is written beside each live result. SERVE_ARGS: more options of `otas serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
OTAS=${OTAS:-.venv/bin/otas}
SCALE=${SCALE:-1.0}
LIMIT=${LIMIT:-1200}
PORT=${PORT:-8017}
OUT=${OUT:-bench/results/live_cpu}
for P in ${POLICIES:-otas fixed:0 fixed:-48 fixed:-20}; do
  $OTAS serve --policy "$P" --port "$PORT" --log-level warning ${SERVE_ARGS:-} &
  S=$!
  for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null && break; sleep 1; done
  $OTAS bench replay --url "http://127.0.0.1:$PORT" --trace azure --load "$SCALE" --limit "$LIMIT" \
    --tag "live_cpu_${P/:/}" --out "$OUT"
  kill -TERM "$S"; wait "$S" || true
done
$OTAS bench summary "$OUT"/*.json --out "$OUT/summary.md"
