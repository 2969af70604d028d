"""The KServe v2 gRPC API: `grpc_predict_v2.proto` (package `inference`, service
`GRPCInferenceService`), its generated modules (`scripts/gen_grpc.sh`; do not edit them), and
`service.py`, the servicer over the same engine as the HTTP app."""
