#!/usr/bin/env bash
# run 27 (issues 11 and 14): stock timm + torch.compile beside our γ = 0 on the shipped Tiny at every batch (run 25's
# phase ran out of its budget at b = 8); the no-op server's overhead at batches 1, 8, 64, 256 (uint8 over HTTP).
set -uo pipefail
O=${OUT:-/tmp/out}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OTAS_CACHE=/tmp/otas-cache
nvidia-smi --query-gpu=name --format=csv,noheader > "$O"/device_head.txt
timeout -k 5 110 python3 bench/gpu_merge.py timm-compile --model tiny --batches 256,64,8,1 --budget-s 100 \
  --out "$O"/timm_compile_tiny.jsonl > /tmp/tc.log 2>&1; echo "timm-compile rc=$? at ${SECONDS}s"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 -m otas.cli serve --noop --max-batch 256 --port 8001 --grpc-port 8002 --log-level warning --http-workers 6 \
  > /tmp/serve_noop.log 2>&1 &
PID=$!
for _ in $(seq 60); do curl -sf localhost:8001/v2/health/ready > /dev/null && break; sleep 1; done
timeout 120 python3 -m otas.cli bench overhead --url http://127.0.0.1:8001 --concurrency 64 --clients 4 --duration-s 3 \
  --warmup-s 0.5 --batches 1,8,64,256 --protocols uint8 --profile .carry/h100_r25_every4.json --out "$O" \
  > "$O"/overhead.txt 2>&1
echo "overhead rc=$? at ${SECONDS}s"; kill -TERM $PID; wait $PID
tail -20 "$O"/overhead.txt; cp /tmp/tc.log /tmp/serve_noop.log "$O"/ 2>/dev/null
