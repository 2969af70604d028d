#!/usr/bin/env bash
# Scale-out on 2 GPUs: `otas serve --backend ray` with 1 replica at 1x the single-GPU
# capacity vs 2 replicas at 2x, both driven by `otas bench replay` over loopback, plus the
# single-process server at 1x (the router's cost) and the no-op overhead of each backend.
# Results (JSON, plots, logs, scale.json with the ratios) under $OUT.
#
# NOT YET RUN. Needs a machine with 2 GPUs (no NCCL needed) with ray[serve] importable
# there: its image has no network, and the ray wheel (~70 MB for cp312) is over a 64 MiB upload limit
# so either an image with ray, or carry .gpu/whl split over two runs that leave it on the
# warm machine. Otherwise prepare as scripts/gpu_serve_replay.sh says (starlette, uvicorn,
# python-multipart wheels; the CIFAR-10 archive and the Azure trace in .gpu/), then:
#   run: bash scripts/gpu_scale_replay.sh   (env: MODEL, PROFILE, SCALE (per replica), LIMIT, POLICY)
set -euo pipefail
cd "$(dirname "$0")/.."
FINAL=${OUT:-bench/results}
OUT=/tmp/gpu_scale
mkdir -p "$OUT" "$FINAL"
if ls .gpu/whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OTAS_CIFAR10=$PWD/.gpu/cifar10-jpg.tar.gz OTAS_CACHE=/tmp/otas-cache
python3 -c "import ray.serve" || { echo "ray[serve] is not importable here; see the header" >&2; exit 2; }
OTAS="python3 -m otas.cli"
MODEL=${MODEL:-$(ls .gpu/*.safetensors | head -1)}
PROFILE=${PROFILE:-}
POLICY=${POLICY:-otas}
SCALE=${SCALE:-1.0}
LIMIT=${LIMIT:-20000}
APPS=${APPS:-otas/configs/apps-h100.yaml}
TRACE=${TRACE:-.gpu/AzureLLMInferenceTrace_conv.csv}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee "$OUT/gpu.txt"
if [ -z "$PROFILE" ]; then
  PROFILE=$OUT/profile_h200.json
  $OTAS profile "$MODEL" --device cuda --batch-sizes 1,8,64,256 --accuracy-limit 1000 --min-time-s 0.5 --out "$PROFILE"
fi

serve_and_replay() {  # TAG LOAD serve-options...
  local tag=$1 load=$2; shift 2
  $OTAS serve --model "$MODEL" --profile "$PROFILE" --apps "$APPS" --device cuda --policy "$POLICY" \
    --max-batch 256 --port 8000 --log-level warning "$@" > "$OUT/serve_$tag.log" 2>&1 &
  local pid=$!
  for _ in $(seq 300); do curl -sf localhost:8000/v2/health/ready > /dev/null && break; sleep 1; done
  $OTAS bench replay --url http://127.0.0.1:8000 --trace "$TRACE" --load "$load" --limit "$LIMIT" \
    --out "$OUT" --tag "$tag" 2>&1 | tee "$OUT/replay_$tag.txt"
  curl -s localhost:8000/metrics > "$OUT/metrics_$tag.txt"
  curl -s localhost:8000/v1/replicas > "$OUT/replicas_$tag.json" || true
  kill -TERM $pid; wait $pid || true
}
L1=$SCALE
L2=$(python3 -c "print(2 * $SCALE)")
serve_and_replay local1 "$L1"                                       # one process, one GPU
serve_and_replay ray1 "$L1" --backend ray --replicas 1               # router + 1 replica
serve_and_replay ray2 "$L2" --backend ray --replicas 2              # router + 2 replicas at 2x load

# Overhead with the no-op model: requests/s each backend sustains (HTTP + routing + scheduling).
for B in "local" "ray --replicas 1" "ray --replicas 2"; do
  TAG=noop_$(echo "$B" | tr -d ' -')
  $OTAS serve --noop --port 8001 --grpc-port 8002 --log-level warning --backend $B > "$OUT/serve_$TAG.log" 2>&1 &
  PID=$!
  for _ in $(seq 300); do curl -sf localhost:8001/v2/health/ready > /dev/null && break; sleep 1; done
  $OTAS bench overhead --url http://127.0.0.1:8001 --concurrency 128 --clients 4 --duration-s 10 \
    --profile "$PROFILE" --out "$OUT/$TAG" | tee "$OUT/overhead_$TAG.txt"
  kill -TERM $PID; wait $PID || true
done

python3 - "$OUT" <<'PY'
import glob, json, sys
out = sys.argv[1]
runs = {}
for f in glob.glob(f"{out}/replay_*.json"):
    r = json.load(open(f)); tag = f.split("_")[-2]
    a = r["live"]["all"]
    runs[tag] = {"load": r["meta"].get("load", r["meta"].get("scale")), "sent": a["sent"], "slo": a["slo_attainment"],
                 "utility_per_request": a["utility_expected"] / a["sent"], "p50_ms": a["latency_ms"]["p50"],
                 "on_time_per_s": a["on_time"] / r["meta"]["duration_s"]}
res = {"runs": runs}
if "ray1" in runs and "ray2" in runs:
    one, two = runs["ray1"], runs["ray2"]
    res["slo_ratio_2x_vs_1x"] = two["slo"] / one["slo"]
    res["utility_per_request_ratio"] = two["utility_per_request"] / one["utility_per_request"]
    res["scaling_efficiency"] = two["on_time_per_s"] / (2 * one["on_time_per_s"])
if "local1" in runs and "ray1" in runs:
    res["router_overhead_p50_ms"] = runs["ray1"]["p50_ms"] - runs["local1"]["p50_ms"]
json.dump(res, open(f"{out}/scale.json", "w"), indent=1)
print(json.dumps(res, indent=1))
PY
$OTAS bench summary "$OUT"/replay_*.json --out "$OUT/summary.md"
tar czf "$FINAL/gpu_scale_replay.tgz" -C /tmp gpu_scale
cp "$OUT/scale.json" "$FINAL/gpu_scale.json"
cp "$OUT/summary.md" "$FINAL/gpu_scale_summary.md"
