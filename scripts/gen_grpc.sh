#!/usr/bin/env bash
# Regenerate otas/server/grpc_api/grpc_predict_v2_pb2{,_grpc}.py from grpc_predict_v2.proto.
# The committed modules come from grpcio-tools 1.81.1 (protobuf gencode 6.33.5):
#   pip install grpcio-tools==1.81.1 && bash scripts/gen_grpc.sh
# A newer grpcio-tools raises the floors in pyproject.toml (grpcio, protobuf) to its own versions.
#
# One edit after protoc: the messages go into a descriptor pool of their own instead of protobuf's
# default pool. Other `inference` protos (tritonclient's, KServe's) define the same message names,
# and two files defining one name cannot share a pool; on the wire only the service path
# (/inference.GRPCInferenceService/...) and the field numbers count, and those are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
out=otas/server/grpc_api
python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. "$out/grpc_predict_v2.proto"
sed -i 's/_descriptor_pool\.Default()\.AddSerializedFile/_descriptor_pool.DescriptorPool().AddSerializedFile/' \
  "$out/grpc_predict_v2_pb2.py"
grep -q "DescriptorPool().AddSerializedFile" "$out/grpc_predict_v2_pb2.py"
python -c "import grpc_tools, importlib.metadata as m; print('generated with grpcio-tools', m.version('grpcio-tools'))"
