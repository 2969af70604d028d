#!/usr/bin/env bash
# Builds the ignored .carry/ that the GPU scripts (gpu_check.sh, gpu_serve_replay.sh) need on a device
# machine without internet, from the package registry and ../shared/data, in one step:
#   .carry/whl/      server wheels the GPU image lacks (cp312 manylinux; not typer, rich or timm: the image
#                    has them, and a wheel here overrides the image's copy)
#   .carry/testwhl/  pytest and hypothesis with their dependencies, for gpu_check.sh
#   .carry/tools/    py-spy, for gpu_host_probe.sh
#   .carry/AzureLLMInferenceTrace_conv.csv, .carry/cifar10-test.tar.gz (the CIFAR-10 test split alone)
# A device call carries the tree plus .carry, at most 64 MiB; the script prints the total.
# Run from the repository root: bash scripts/gpu_carry.sh   (env: DATA, default ../shared/data; PY, default 3.12; GRPC=0)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
PY=${PY:-3.12}
mkdir -p .carry/whl .carry/testwhl
fetch() {  # fetch DIR WHEEL...: binary wheels for the GPU image's Python, no dependencies resolved here
  local dir=$1; shift
  for w in "$@"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
      --platform any -d "$dir" "$w"
  done
}
# GRPC=0 leaves grpcio and protobuf out (7.7 MB): gpu_serve_replay.sh and gpu_host_probe.sh serve with
# --grpc-port 0, which never imports them, and the tree plus .carry must stay under 64 MiB
WHEELS="starlette==1.10.0 uvicorn==0.54.0 python-multipart==0.0.34 anyio h11 sniffio idna typing_extensions httptools uvloop orjson"
if [ "${GRPC:-1}" != 0 ]; then WHEELS="$WHEELS grpcio==1.85.3 protobuf==6.33.6"; fi
# shellcheck disable=SC2086
fetch .carry/whl $WHEELS
mkdir -p .carry/tools
fetch .carry/tools py-spy  # gpu_host_probe.sh samples the server with it
fetch .carry/testwhl pytest pluggy iniconfig packaging hypothesis sortedcontainers attrs
cp "$DATA/traces/AzureLLMInferenceTrace_conv.csv" .carry/
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar xzf "$DATA/cifar10-jpg.tar.gz" -C "$tmp" test
tar czf .carry/cifar10-test.tar.gz -C "$tmp" test
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
carry=$(du -sb .carry | cut -f1)
echo "tree $((tree >> 20)) MiB + .carry $((carry >> 20)) MiB = $(((tree + carry) >> 20)) MiB (a device call carries at most 64)"
