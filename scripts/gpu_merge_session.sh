#!/usr/bin/env bash
# Merge implementations on one GPU, every phase of bench/gpu_merge.py in one run of about 9.5 minutes (TOTAL_S + ~15 s)
# (H100): SDPA alone; per model (shipped Tiny, ViT-B/16 at 224 px with random weights, and SMALL if
# given), γ < 0 and batch 256/8/64/1, the served forward (CUDA graphs, bf16) with each merge_impl,
# with and without proportional attention, against stock (γ = 0) and the limit (the token counts with
# no merge work), interleaved; accuracy of every impl against the reference on 1000 CIFAR-10 test
# images per task (Tiny, when the archive is there); our γ = 0 against stock timm + torch.compile.
#
# Run from the repository root, with .carry/cifar10-jpg.tar.gz beside it (or OTAS_CIFAR10 set):
#   bash scripts/gpu_merge_session.sh        (env: OUT, SMALL=<checkpoint>, TOTAL_S (default 500), PYTHON)
# A dry run of the plumbing on a CPU (eager, no CUDA-only phases), e.g.:
#   DEVICE=cpu EXTRA="--batches 2 --gammas=-20,0 --variants reference,matmul+column --limit 40" \
#     OUT=/tmp/gm bash scripts/gpu_merge_session.sh
# Writes under $OUT (default bench/results/gpu_merge): gpu_merge.json (rows), gpu_merge.md (all tables),
# gpu_merge.png (realised share vs γ), gpu_merge_parts.jsonl (raw records), gpu_merge.log; prints the
# summary table last. Every phase has a hard timeout; a phase cut short keeps the records it wrote.
set -uo pipefail  # no -e: a failed phase must not cost the others
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu_merge}
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-560}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OTAS_CACHE=${OTAS_CACHE:-/tmp/otas-cache}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/otas-inductor}  # shared by the phases' processes
if [ -z "${OTAS_CIFAR10:-}" ] && [ -f .carry/cifar10-jpg.tar.gz ]; then export OTAS_CIFAR10=$PWD/.carry/cifar10-jpg.tar.gz; fi
PARTS=$OUT/gpu_merge_parts.jsonl
LOG=$OUT/gpu_merge.log
: > "$PARTS"
: > "$LOG"
T0=$SECONDS
VITB=timm:vit_base_patch16_224
DEVICE=${DEVICE:-cuda}
read -r -a EXTRA <<< "${EXTRA:-}"
[ "$DEVICE" = cuda ] || EXTRA+=(--device "$DEVICE" --mode eager)

# phase CAP RESERVE ARGS...: run bench/gpu_merge.py ARGS with a hard limit of min(CAP, time left - RESERVE)
# seconds (RESERVE: what the later phases need); its soft budget (stop starting new groups) is 25 s less.
phase() {
  local cap=$1 reserve=$2; shift 2
  local left=$((TOTAL_S - (SECONDS - T0) - reserve))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 20 ]; then echo "== skip: $* (no time left)" | tee -a "$LOG"; return; fi
  echo "== $* (limit ${limit}s, at $((SECONDS - T0))s)" | tee -a "$LOG"
  timeout -k 5 "$limit" "$PY" bench/gpu_merge.py "$@" --budget-s $((limit - 25)) --out "$PARTS" >> "$LOG" 2>&1
  echo "   rc=$? at $((SECONDS - T0))s" | tee -a "$LOG"
}

{ nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.max.sm --format=csv || true
  "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.is_available())"
  git log -1 --format='commit %h %s' 2>/dev/null || true; } >> "$LOG" 2>&1

# phase CAP RESERVE: RESERVE = the caps of the phases after it (within TOTAL_S), then the report.
# VARIANTS: the uncompiled variants timed (default: all of otas.profile.gpumerge.VARIANTS);
# COMPILED: variants of the whole forward compiled inside the graphs, at a few γ and batches (each
# cell compiles its own stock and limit too, ~10-30 s per compile), "" to skip.
VARIANTS=${VARIANTS:-all}
COMPILED=${COMPILED:-matmul+column@compiled-graphs}
V=(--variants "$VARIANTS")
[ "$DEVICE" = cuda ] && [ -z "${SKIP_SDPA:-}" ] && phase 30 530 sdpa --batches 256,8
phase 120 410 time --model tiny "${V[@]}" "${EXTRA[@]}"
[ -n "$COMPILED" ] && [ "$DEVICE" = cuda ] && phase 130 280 time --model tiny --variants "$COMPILED" --gammas=-48,-20,0 --batches 256,8 --profile-batches 0
phase 100 180 time --model "$VITB" "${V[@]}" "${EXTRA[@]}"
[ -n "$COMPILED" ] && [ "$DEVICE" = cuda ] && phase 80 100 time --model "$VITB" --variants "$COMPILED" --gammas=-16,0 --batches 256,8 --profile-batches 0
if [ -n "${SMALL:-}" ]; then phase 120 100 time --model "$SMALL" --batches 256,8 "${V[@]}" "${EXTRA[@]}"; fi  # if time is left
if [ -n "${OTAS_CIFAR10:-}" ] && [ -z "${SKIP_ACCURACY:-}" ]; then
  phase 40 60 accuracy --model tiny "${EXTRA[@]}"
else
  echo "== skip accuracy" | tee -a "$LOG"
fi
[ "$DEVICE" = cuda ] && phase 60 0 timm-compile --model tiny --batches 256,8

echo "== report at $((SECONDS - T0))s" | tee -a "$LOG"
"$PY" bench/gpu_merge.py report "$PARTS" --out-dir "$OUT" 2>&1 | tee -a "$LOG"
ls -la "$OUT"
