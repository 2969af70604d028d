#!/usr/bin/env bash
# GPU checks the CPU CI cannot run, on one GPU machine: the `gpu`-marked tests, the shipped model served
# on CUDA against the CPU (labels per γ), and the own-model tutorial trained and profiled with --device cuda.
# Prepare (once): `bash scripts/gpu_carry.sh` (the server's wheels in .carry/whl, pytest and hypothesis in
# .carry/testwhl).
# Run from the repository root: bash scripts/gpu_check.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/whl/*.whl .carry/testwhl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OTAS_CACHE=/tmp/otas-cache
python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -15
python3 - <<'PY'
import torch, glob
from PIL import Image
import numpy as np
from otas.engine.runner import Runner
from otas.predict import default_model_path
imgs = [np.asarray(Image.open(p).convert("RGB").resize((32, 32))) for p in sorted(glob.glob("otas/assets/sample/novel/*/*"))[:16]]
cpu, gpu = Runner.load(default_model_path(), "cpu"), Runner.load(default_model_path(), "cuda")
print("gpu merge_impl", gpu.fast.merge_impl, "mode", gpu.mode)
for g in (-48, -20, 0, 8):
    a, b = cpu.run(imgs, ["novel"] * len(imgs), g), gpu.run(imgs, ["novel"] * len(imgs), g)
    pa, pb = np.asarray(a.probs), np.asarray(b.probs)
    print("gamma", g, "labels agree", float((pa.argmax(1) == pb.argmax(1)).mean()), "max |dp|", float(np.abs(pa - pb).max()))
PY
python3 scripts/tutorial_data.py /tmp/data > /dev/null && \
python3 -m otas.cli train prompts --backbone timm:test_vit --pretrained-file /tmp/data/test_vit.safetensors \
  --task colours=/tmp/data/colours --task lights=/tmp/data/lights --gammas -8,0,8 --epochs 3 --head-epochs 5 \
  --out /tmp/mymodel/model.safetensors 2>&1 | tail -4 && \
python3 -m otas.cli profile /tmp/mymodel --device cuda --batch-sizes 1,8 --min-time-s 0.2 --mode graphs 2>&1 | tail -6
ls /tmp/mymodel/profiles
