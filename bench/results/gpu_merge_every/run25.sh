#!/usr/bin/env bash
# Run 25 (issue 11): the shipped Tiny profiled with merge_every 4, 8 and 12 on one machine (graphs, bf16, every γ,
# all 5,000 test images per task), an fp32 accuracy profile with merge_every 4 (the CPU profile's accuracy source);
# the served merge (triton+bias, Triton LayerNorm) at k = 4 and 12 against its own γ = 0 and its own limit on Tiny,
# Small and ViT-B/16; stock timm + torch.compile beside our γ = 0.
set -uo pipefail
cd "$(dirname "$0")/.."
O=${OUT:-/tmp/out}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OTAS_CACHE=/tmp/otas-cache OTAS_CIFAR10=$PWD/.carry/cifar10-test.tar.gz
echo "tree ${TREE:-?}" > "$O"/device_head.txt; nvidia-smi --query-gpu=name,clocks.max.sm --format=csv >> "$O"/device_head.txt
DEV=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -o "H[0-9]00" | tr A-Z a-z)
for k in 4 12 8; do
  timeout -k 5 120 python3 -m otas.cli profile otas/assets/vit_tiny_p2_c5.safetensors --device cuda \
    --batch-sizes 1,8,64,256 --mode graphs --min-time-s 0.5 --merge-every $k --data .carry/cifar10-test.tar.gz \
    --out "$O"/vit_tiny_p2_c5__${DEV:-gpu}-graphs-every$k.json > /tmp/profile$k.log 2>&1
  echo "profile every$k rc=$? at ${SECONDS}s"; tail -3 /tmp/profile$k.log
done
rm -f "$O"/*.md
timeout -k 5 90 python3 -m otas.cli profile otas/assets/vit_tiny_p2_c5.safetensors --device cuda --dtype float32 \
  --mode eager --batch-sizes 1 --min-time-s 0.05 --merge-every 4 --data .carry/cifar10-test.tar.gz \
  --out /tmp/fp32-every4.json > /tmp/profile_fp32.log 2>&1
echo "profile fp32 every4 rc=$? at ${SECONDS}s"
V=triton+bias/every4/fusednorm,triton+bias/every12/fusednorm
P=/tmp/gm25.jsonl; : > $P
timeout -k 5 100 python3 bench/gpu_merge.py time --model tiny --variants $V --gammas=-48,-32,-20,-16,-12,-8 \
  --batches 256,64,8 --profile-batches 0 --budget-s 80 --out $P > /tmp/gm25.log 2>&1; echo "tiny rc=$? at ${SECONDS}s"
timeout -k 5 70 python3 bench/gpu_merge.py time --model arch:vit_small_p2 --variants $V --gammas=-48,-32,-20,-16,-12,-8 \
  --batches 256,64,8 --profile-batches 0 --budget-s 55 --out $P >> /tmp/gm25.log 2>&1; echo "small rc=$? at ${SECONDS}s"
timeout -k 5 70 python3 bench/gpu_merge.py time --model timm:vit_base_patch16_224 --variants $V --gammas=-16,-12,-8,-4 \
  --batches 256,64,8 --profile-batches 0 --budget-s 55 --out $P >> /tmp/gm25.log 2>&1; echo "vitb rc=$? at ${SECONDS}s"
cp $P "$O"/
for m in tiny arch:vit_small_p2 timm:vit_base_patch16_224; do
  timeout -k 5 60 python3 bench/gpu_merge.py timm-compile --model $m --batches 256,64,8 --budget-s 45 --out $P \
    >> /tmp/gm25.log 2>&1; echo "timm-compile $m rc=$? at ${SECONDS}s"
done
cp $P "$O"/
tar czf "$O"/logs.tgz /tmp/profile*.log /tmp/gm25.log /tmp/fp32-every4.json 2>/dev/null
echo done at ${SECONDS}s
