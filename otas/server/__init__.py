"""HTTP serving: KServe v2 / Open Inference Protocol and a friendly /v1 API over the engine."""
