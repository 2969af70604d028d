#!/usr/bin/env bash
# Merge implementations on one GPU, every phase of bench/gpu_merge.py in one run of about 9.5 minutes (TOTAL_S + ~15 s)
# (H100): SDPA alone; per model (shipped Tiny, ViT-B/16 at 224 px with random weights, and SMALL if
# given), γ < 0 and batch 256/8/64/1, the served forward (CUDA graphs, bf16) with each merge_impl,
# with and without proportional attention, against stock (γ = 0) and the limit (the token counts with
# no merge work), interleaved; accuracy of every impl against the reference on 1000 CIFAR-10 test
# images per task (Tiny, when the archive is there); our γ = 0 against stock timm + torch.compile.
#
# Run from the repository root, with .carry/cifar10-jpg.tar.gz beside it (or OTAS_CIFAR10 set):
#   bash scripts/gpu_merge_session.sh        (env: OUT, SMALL=<checkpoint or arch:vit_small_p2>, TOTAL_S (default 560),
#                                             PYTHON, and the per-phase knobs below)
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

# The phases are planned first (add CAP ARGS...), then run in order, each with a hard limit of
# min(CAP, time left - the caps of the phases after it) seconds; its soft budget (stop starting new
# groups) is 25 s less. A phase with under 20 s left is skipped.
CAPS=() PLANS=()
add() { CAPS+=("$1"); shift; PLANS+=("$(printf '%q ' "$@")"); }

# VARIANTS: the uncompiled variants timed (default: all of otas.profile.gpumerge.VARIANTS);
# COMPILED: variants of the whole forward compiled inside the graphs, at a few γ and batches (each
# cell compiles its own stock and limit too, ~10-40 s per compile); set but empty to skip.
# Per-phase narrowing (each a full argument list, default: none): TINY_ARGS (e.g. "--gammas=-48,-20,-8"),
# VITB_ARGS, SMALL_ARGS; ACC_VARIANTS: the variants whose accuracy is measured (default: VARIANTS).
# Caps in seconds: SDPA_S, STEP_S, TINY_S, ACC_S, COMPILED_S, VITB_S, VITB_COMPILED_S, SMALL_S, TIMM_S (0 skips a phase).
VARIANTS=${VARIANTS:-all}
COMPILED=${COMPILED-matmul+column@compiled-graphs}
V=(--variants "$VARIANTS")
read -r -a TINY_ARGS <<< "${TINY_ARGS:-}"
read -r -a VITB_ARGS <<< "${VITB_ARGS:-}"
read -r -a SMALL_ARGS <<< "${SMALL_ARGS:-}"
CUDA=$([ "$DEVICE" = cuda ] && echo 1)
[ -n "$CUDA" ] && [ -z "${SKIP_SDPA:-}" ] && add "${SDPA_S:-30}" sdpa --batches "${SDPA_BATCHES:-256,8}"
# STEP_ARGS: the merge steps alone through kernel variants (`step` phase, e.g. "--model tiny --kernels image,image/c128")
read -r -a STEP_ARGS <<< "${STEP_ARGS:-}"
[ -n "$CUDA" ] && [ ${#STEP_ARGS[@]} -gt 0 ] && add "${STEP_S:-60}" step "${STEP_ARGS[@]}"
add "${TINY_S:-120}" time --model tiny "${V[@]}" "${TINY_ARGS[@]}" "${EXTRA[@]}"
if [ -n "${OTAS_CIFAR10:-}" ] && [ -z "${SKIP_ACCURACY:-}" ]; then
  add "${ACC_S:-40}" accuracy --model tiny --variants "${ACC_VARIANTS:-$VARIANTS}" "${EXTRA[@]}"
else
  echo "== skip accuracy (no CIFAR-10 archive, or SKIP_ACCURACY)" | tee -a "$LOG"
fi
[ -n "$COMPILED" ] && [ -n "$CUDA" ] && add "${COMPILED_S:-130}" time --model tiny --variants "$COMPILED" \
  --gammas=-48,-20 --batches 256,8 --profile-batches 0
add "${VITB_S:-100}" time --model "$VITB" "${V[@]}" "${VITB_ARGS[@]}" "${EXTRA[@]}"
[ -n "$COMPILED" ] && [ -n "$CUDA" ] && add "${VITB_COMPILED_S:-80}" time --model "$VITB" --variants "$COMPILED" \
  --gammas=-16 --batches 256,8 --profile-batches 0
[ -n "${SMALL:-}" ] && add "${SMALL_S:-120}" time --model "$SMALL" --batches 256,8 "${V[@]}" "${SMALL_ARGS[@]}" "${EXTRA[@]}"
[ -n "$CUDA" ] && add "${TIMM_S:-60}" timm-compile --model tiny --batches 256,8

{ nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.max.sm --format=csv || true
  "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.is_available())"
  git log -1 --format='commit %h %s' 2>/dev/null || true; } >> "$LOG" 2>&1

for i in "${!PLANS[@]}"; do
  reserve=0
  for c in "${CAPS[@]:i+1}"; do reserve=$((reserve + c)); done
  cap=${CAPS[i]} left=$((TOTAL_S - (SECONDS - T0) - reserve))
  limit=$((cap < left ? cap : left))
  if [ "$cap" -le 0 ] || [ "$limit" -lt 20 ]; then echo "== skip: ${PLANS[i]}(limit ${limit}s)" | tee -a "$LOG"; continue; fi
  echo "== ${PLANS[i]}(limit ${limit}s, at $((SECONDS - T0))s)" | tee -a "$LOG"
  eval "timeout -k 5 $limit $PY bench/gpu_merge.py ${PLANS[i]} --budget-s $((limit - 25)) --out $PARTS" >> "$LOG" 2>&1
  echo "   rc=$? at $((SECONDS - T0))s" | tee -a "$LOG"
done

echo "== report at $((SECONDS - T0))s" | tee -a "$LOG"
"$PY" bench/gpu_merge.py report "$PARTS" --out-dir "$OUT" 2>&1 | tee -a "$LOG"
ls -la "$OUT"
