#!/usr/bin/env bash
# Live Azure-trace replay on one GPU: `otas serve --device cuda` (CUDA graphs) and `otas bench replay` on
# the same machine over loopback, per policy and load, beside the simulator's prediction; the GPU's
# busy share (nvidia-smi samples, and the server's measured batch time over the replay's wall time);
# the server's no-op overhead. Results (≤ 8 files) under $OUT.
#
# Prepare here (once): `bash scripts/gpu_carry.sh` builds the ignored .carry/ (the wheels the GPU image
# lacks, the trace, the CIFAR-10 test split; the tree plus .carry stay under a device call's 64 MiB).
# Run (on the GPU machine, from the repository root, .carry/ carried):
#   bash scripts/gpu_serve_replay.sh     (env: OUT, POLICIES, LOADS, DURATION_S, PROFILE, REPROFILE=1 [PROFILE_OUT: its
#                                         file name], APPS,
#                                         SERVE_ARGS: more `otas serve` options, e.g. --decode-processes,
#                                         COALESCE_MS: the replay's gateway window, e.g. 1 for loads near the GPU's,
#                                         FORMAT: the replay's request format (otas: base64 PNGs; otas-uint8:
#                                         raw pixels in binary, nothing to decode), OVERHEAD=0: skip the no-op
#                                         overhead run, REPEAT: play the scaled trace this many times,
#                                         SENDERS: the replay's sending processes (default 1; several when one
#                                         process's send lag grows at thousands of requests a second),
#                                         TWIN_ARCH: serve a latency twin of this architecture instead, e.g.
#                                         vit_base_p2, profiled first: a model the GPU limits, not the host,
#                                         OVERHEAD_PROTOCOLS: the no-op run's protocols (default uint8),
#                                         REPLAY_ARGS: more `otas bench replay` options, e.g. --no-state-wait,
#                                         ROUNDS: play the policies in turn this many times on one machine
#                                         (tags <policy>-r<k>: the spread of repeats beside the differences),
#                                         SPY: a py-spy binary to sample the server (and its front ends) with during the
#                                         replay at SPY_LOAD; the connections each process holds then, from ss)
set -uo pipefail  # no -e: one failed replay must not cost the others
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/live_h100}
W=/tmp/live   # everything here; $OUT gets the summary files and one tarball of the rest
mkdir -p "$OUT" "$W"
T0=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OTAS_CIFAR10=${CIFAR:-$PWD/.carry/cifar10-test.tar.gz} OTAS_CACHE=/tmp/otas-cache
OTAS="python3 -m otas.cli"
POLICIES=${POLICIES:-otas fixed:0 fixed:16}
LOADS=${LOADS:-0.01 0.03 0.1}
DURATION_S=${DURATION_S:-10}
APPS=${APPS:-otas/configs/apps-h100.yaml}
TRACE=${TRACE:-.carry/AzureLLMInferenceTrace_conv.csv}
PROFILE=${PROFILE:-profiles/vit_tiny_p2_c5__h100-graphs.json}
{ nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
  git log -1 --format='commit %h %s' 2>/dev/null; nproc; } > "$W/machine.txt" 2>&1
MODEL=otas/assets/vit_tiny_p2_c5.safetensors
if [ -n "${TWIN_ARCH:-}" ]; then
  # a latency twin: random weights of this architecture (e.g. vit_base_p2) with the shipped model's Γ, tasks
  # and classes, profiled here and planned with $PROFILE's accuracies. Its answers are random; the live run
  # and the simulator compare expected utility (u · profiled accuracy of the γ served, on time), which is
  # what a larger model that the GPU, not the host, limits would earn at those accuracies.
  MODEL=$W/${TWIN_ARCH}_twin.safetensors
  python3 scripts/latency_twin.py --like otas/assets/vit_tiny_p2_c5.safetensors --arch "$TWIN_ARCH" --out "$MODEL" \
    > "$W/twin.log" 2>&1
  echo "twin rc=$? at $((SECONDS - T0))s"
  REPROFILE=1
  PROFILE_OUT=${PROFILE_OUT:-${TWIN_ARCH}_twin__graphs.json}
fi
if [ -n "${REPROFILE:-}" ]; then  # latency of the served path as it is now; accuracy kept from $PROFILE
  NAME=${PROFILE_OUT:-vit_tiny_p2_c5__h100-graphs.json}
  EVERY=$(python3 -c "from otas.profile.table import Profile; print(Profile.load('$PROFILE').merge_every or '')")
  $OTAS profile "$MODEL" --device cuda --batch-sizes 1,8,64,256 --mode graphs ${EVERY:+--merge-every $EVERY} \
    --min-time-s 0.5 --accuracy-from "$PROFILE" --out "$W/$NAME" > "$W/profile.log" 2>&1
  echo "profile rc=$? at $((SECONDS - T0))s"
  cp "$W/$NAME" "$OUT/"
  PROFILE=$W/$NAME
fi
CAP=$(python3 -c "
from otas.config import load_apps; from otas.profile.table import Profile; from otas.sim.traces import capacity_per_s
print(capacity_per_s(Profile.load('$PROFILE'), load_apps('$APPS'), 256))")
echo "capacity of γ=0: $CAP/s"
nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader,nounits -lms 250 > "$W/gpu_util.csv" 2>/dev/null &
SMI=$!
BUDGET_S=${BUDGET_S:-480}  # no new policy starts after this (the overhead run and the summary need ~70 s)
ROUNDS=${ROUNDS:-1}
for ROUND in $(seq "$ROUNDS"); do
for POLICY in $POLICIES; do
  TAG=${POLICY/:/}
  [ "$ROUNDS" -gt 1 ] && TAG=$TAG-r$ROUND
  if [ $((SECONDS - T0)) -gt "$BUDGET_S" ]; then echo "skip $POLICY: time budget"; continue; fi
  $OTAS serve --model "$MODEL" --profile "$PROFILE" --apps "$APPS" --device cuda --policy "$POLICY" --max-batch 256 ${SERVE_ARGS:-} \
    --port 8000 --grpc-port 0 --log-level warning > "$W/serve_$TAG.log" 2>&1 &
  PID=$!
  UP=
  for _ in $(seq 180); do
    curl -sf localhost:8000/v2/health/ready > /dev/null && { UP=1; break; }
    kill -0 $PID 2>/dev/null || break
    sleep 1
  done
  if [ -z "$UP" ]; then  # exited or never ready: no replay against a dead port
    echo "$POLICY: server not ready at $((SECONDS - T0))s; see serve_$TAG.log"; tail -3 "$W/serve_$TAG.log"
    kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null; continue
  fi
  echo "$POLICY ready at $((SECONDS - T0))s"
  for LOAD in $LOADS; do
    N=$(python3 -c "print(int($LOAD * $CAP * $DURATION_S))")
    curl -s localhost:8000/metrics > "$W/metrics_${TAG}_x${LOAD}_before.txt"
    date +%s.%N > "$W/t_${TAG}_x${LOAD}.txt"
    $OTAS bench replay --url http://127.0.0.1:8000 --trace "$TRACE" --load "$LOAD" --limit "$N" --out "$W" \
      --coalesce-ms "${COALESCE_MS:-0}" --format "${FORMAT:-otas}" --repeat "${REPEAT:-1}" \
      --senders "${SENDERS:-1}" --tag "$TAG" ${REPLAY_ARGS:-} > "$W/replay_${TAG}_x${LOAD}.txt" 2>&1 &
    REP=$!
    if [ -n "${SPY:-}" ] && [ "$LOAD" = "${SPY_LOAD:-1}" ]; then  # py-spy over the server's threads, 2 s of this replay
      for _ in $(seq 300); do grep -q "replaying against" "$W/replay_${TAG}_x${LOAD}.txt" && break; sleep 0.2; done
      for C in $(ps -o pid= --ppid $PID); do  # front ends (--http-workers): the children leading their own group
        [ "$(ps -o pgid= -p "$C" | tr -d ' ')" = "$C" ] && $SPY record --pid "$C" --duration 2 --rate 250 --format raw \
          -o "$W/spy_${TAG}_x${LOAD}_front$C.txt" > /dev/null 2>&1 &
      done
      $SPY record --pid $PID --duration 2 --rate 250 --threads --format raw -o "$W/spy_${TAG}_x${LOAD}.txt" > /dev/null 2>&1
      ss -tnpH state established "( sport = :8000 )" > "$W/conns_${TAG}_x${LOAD}.txt" 2>/dev/null
    fi
    wait $REP
    echo "  load $LOAD ($N requests) rc=$? at $((SECONDS - T0))s"
    date +%s.%N >> "$W/t_${TAG}_x${LOAD}.txt"
    curl -s localhost:8000/metrics > "$W/metrics_${TAG}_x${LOAD}_after.txt"
  done
  kill -TERM $PID; wait $PID
done
done
kill $SMI 2>/dev/null
# Server overhead: the no-op model (HTTP + scheduling + collation), images per request 1, 8, 64, 256
if [ "${OVERHEAD:-1}" != 0 ]; then
$OTAS serve --noop --max-batch 256 --port 8001 --grpc-port 8002 --log-level warning ${SERVE_ARGS:-} > "$W/serve_noop.log" 2>&1 &
PID=$!
for _ in $(seq 60); do curl -sf localhost:8001/v2/health/ready > /dev/null && break; sleep 1; done
$OTAS bench overhead --url http://127.0.0.1:8001 --concurrency 64 --clients 4 --duration-s 3 --warmup-s 0.5 --batches 1,8,64,256 \
  --protocols "${OVERHEAD_PROTOCOLS:-uint8}" \
  --profile "$PROFILE" --out "$W" > "$W/overhead.txt" 2>&1
echo "overhead rc=$? at $((SECONDS - T0))s"
kill -TERM $PID; wait $PID
fi
python3 -m otas.bench.live_summary "$W" --out "$OUT" > "$W/summary.log" 2>&1 || cat "$W/summary.log"
tar czf "$OUT/live_raw.tgz" -C /tmp live
ls -la "$OUT"
