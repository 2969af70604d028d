#!/usr/bin/env bash
# Run 21 (issue 11): the shipped Tiny profiled on this GPU with merge_every 1 and 4, side by side (graphs, bf16,
# every γ, full accuracy on the CIFAR-10 test split), then the served merge (triton+bias, Triton LayerNorm) with
# merge_every 1 and 4 against stock and the limit (bench/gpu_merge.py time), Tiny, Small, ViT-B/16.
set -uo pipefail
cd "$(dirname "$0")/.."
O=${OUT:-/tmp/out}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OTAS_CACHE=/tmp/otas-cache OTAS_CIFAR10=$PWD/.carry/cifar10-test.tar.gz
git log -1 --format=%H > "$O"/device_head.txt
DEV=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -o "H[0-9]00" | tr A-Z a-z)
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv >> "$O"/device_head.txt
for k in 1 4; do
  timeout -k 5 170 python3 -m otas.cli profile otas/assets/vit_tiny_p2_c5.safetensors --device cuda \
    --batch-sizes 1,8,64,256 --mode graphs --min-time-s 0.5 --merge-every $k --data .carry/cifar10-test.tar.gz \
    --out "$O"/vit_tiny_p2_c5__${DEV:-gpu}-graphs-every$k.json > /tmp/profile$k.log 2>&1
  echo "profile every$k rc=$? at ${SECONDS}s"; tail -5 /tmp/profile$k.log
done
V=triton+bias/fusednorm,triton+bias/every4/fusednorm
P=/tmp/gm21.jsonl; : > $P
timeout -k 5 90 python3 bench/gpu_merge.py time --model tiny --variants $V --gammas=-48,-32,-20,-16,-12,-8 \
  --batches 256,64,8 --profile-batches 0 --budget-s 70 --out $P > /tmp/gm21.log 2>&1; echo "tiny rc=$? at ${SECONDS}s"
timeout -k 5 60 python3 bench/gpu_merge.py time --model arch:vit_small_p2 --variants $V --gammas=-48,-32,-20,-16,-12,-8 \
  --batches 256,64,8 --profile-batches 0 --budget-s 42 --out $P >> /tmp/gm21.log 2>&1; echo "small rc=$? at ${SECONDS}s"
timeout -k 5 60 python3 bench/gpu_merge.py time --model timm:vit_base_patch16_224 --variants $V --gammas=-16,-12,-8,-4 \
  --batches 256,64,8 --profile-batches 0 --budget-s 42 --out $P >> /tmp/gm21.log 2>&1; echo "vitb rc=$? at ${SECONDS}s"
mkdir -p /tmp/gm21 && python3 bench/gpu_merge.py report $P --out-dir /tmp/gm21 > /tmp/gm21_report.log 2>&1
cp $P /tmp/gm21/gpu_merge.json /tmp/gm21/gpu_merge.md "$O"/ 2>/dev/null
tar czf "$O"/logs.tgz /tmp/profile1.log /tmp/profile4.log /tmp/gm21.log /tmp/gm21_report.log 2>/dev/null
echo done at ${SECONDS}s
