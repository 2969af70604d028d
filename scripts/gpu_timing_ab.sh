#!/usr/bin/env bash
# How a launched batch is timed on the device (`FastConfig.launch_timing`): one batch at a time (`serial`,
# `--no-launch-ahead`), launching ahead with two timing events a batch (`events`, the default) and with one
# (`chain`), served with `bench/model_overhead.py` at γ = 0 (b = 1, 8, 64) and γ = -32 (b = 64), two rounds in
# opposite orders, on one GPU. The arms differ only in a FastConfig field, set by a wrapper of the CLI.
# Run on the GPU machine from the repository root, .carry/ carried (`bash scripts/gpu_carry.sh`; the profile as
# .carry/h100_r25_every4.json):   OUT=$OUT bash scripts/gpu_timing_ab.sh, then ROUNDS=2 … (one call each)
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD OTAS_CACHE=/tmp/otas-cache
cat > /tmp/timed.py <<'PY'
import functools, os
import otas.engine.runner as runner
runner.FastConfig = functools.partial(runner.FastConfig, launch_timing=os.environ.get("LAUNCH_TIMING", "events"))
from otas.cli import main
if __name__ == "__main__":
    main()
PY
mkdir -p /tmp/t
for R in ${ROUNDS:-1}; do
  [ "$R" = 1 ] && ARMS="serial events chain" || ARMS="chain events serial"
  for ARM in $ARMS; do
    SA="--http-workers 6 --launch-ahead"; [ $ARM = serial ] && SA="--http-workers 6 --no-launch-ahead"
    for G in 0 -32; do
      [ "$G" = 0 ] && B=1,8,64 || B=64
      LAUNCH_TIMING=$([ $ARM = chain ] && echo chain || echo events) timeout 200 python3 bench/model_overhead.py \
        --device cuda --profile .carry/h100_r25_every4.json --apps otas/configs/apps-h100.yaml --gamma "$G" \
        --batches "$B" --serve-args "$SA" --otas "python3 /tmp/timed.py" --duration-s 4 --out "/tmp/t/${ARM}_g${G}_r$R" \
        > "/tmp/t/${ARM}_g${G}_r$R.log" 2>&1
      echo "$ARM γ $G r$R rc=$? at $SECONDS s"; grep "^b=" "/tmp/t/${ARM}_g${G}_r$R.log"
    done
  done
done
tar czf "$OUT/timing_raw_${ROUNDS:-1}.tgz" -C /tmp t
