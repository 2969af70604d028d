# Sourced by the A/B scripts (gpu_price_ab.sh, gpu_latency_ab.sh, gpu_pad_ab.sh) from the repository root:
# `one TREE TAG POLICY LOADS` runs scripts/gpu_serve_replay.sh from TREE (a copy of the repository with one default
# changed, `variant`, or .) for POLICY at LOADS with the settings in $C, each `otas` with its decision log, and keeps
# its results under $RES/TAG.

# the replays' settings, less the profile (the Azure conv trace played 6 times, raw-pixel requests coalesced over
# 5 ms by 4 senders, no no-op overhead run)
REPLAY="APPS=otas/configs/apps-h100.yaml FORMAT=otas-uint8 REPEAT=6 COALESCE_MS=5 SENDERS=4 OVERHEAD=0 TRACE=$PWD/.carry/AzureLLMInferenceTrace_conv.csv CIFAR=$PWD/.carry/cifar10-test.tar.gz"

variant() {  # variant DIR: a fresh copy at DIR of what a replay runs, to change one default in
  rm -rf "$1"; mkdir -p "$1"; cp -r otas scripts pyproject.toml .carry "$1"/
}

one() {
  rm -rf /tmp/live
  local extra=""; [ "$3" = otas ] && extra=" --decision-log $RES/dl_$2.jsonl"
  (cd "$1" && env $C "SERVE_ARGS=--http-workers 6$extra${SERVE_EXTRA:-}" BUDGET_S=200 OUT=$RES/$2 POLICIES="$3" LOADS="$4" ROUNDS=1 \
    timeout 190 bash scripts/gpu_serve_replay.sh > $RES/$2.log 2>&1)
  echo "$2 rc=$? at $SECONDS s"
  find /tmp/live -name "*.png" -delete 2>/dev/null; rm -f $RES/$2/live_raw.tgz; mv /tmp/live $RES/$2/raw
  sed -n '3,7p' $RES/$2/live.md; grep -h "otas_floor_batches_total{" $RES/$2/raw/metrics_*after.txt 2>/dev/null
}
