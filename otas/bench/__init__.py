"""Load generation (trace replay over HTTP; server overhead over HTTP and gRPC) and its reports."""
