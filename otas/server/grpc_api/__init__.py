"""The KServe v2 gRPC API: `grpc_predict_v2.proto` (package `inference`, service
`GRPCInferenceService`), its generated modules (`scripts/gen_grpc.sh`; do not edit them), and
`service.py`, the servicer over the same engine as the HTTP app."""

import os

# gRPC's C core writes its own lines (one per call with oversized metadata, say) to stderr as plain
# text, outside the server's JSON log, where any client could flood it; quiet unless the operator
# sets GRPC_VERBOSITY (it must be set before grpc is first imported).
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
