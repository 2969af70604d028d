"""Request and response bodies: the KServe v2 / Open Inference Protocol (JSON) and the friendly
`/v1` API. Plain functions over parsed JSON; no web framework, no torch.

Infer request (one input; the application is a request parameter)::

    {"id": "42", "parameters": {"app": "novel"},
     "inputs": [{"name": "image", "datatype": "BYTES", "shape": [N], "data": ["<base64 PNG/JPEG>", ...]}]}
    # or "datatype": "UINT8" (0..255) / "FP32" (0..1), "shape": [N, H, W, 3], "data": [flat values]

Infer response: outputs `probs` FP32 [N, K], `label` BYTES [N], `gamma` INT32 [N], `deadline_met`
BOOL [N], `latency_ms` FP32 [N, 3] (queue, execution, total). Errors: ``{"error": "<message>"}``
(the protocol's body) plus ``"reason"``, a stable code for programs.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np

from otas.engine.images import ImageError, tensor_images
from otas.engine.serving import Served

SERVER_NAME = "otas"
TENSOR_TYPES = ("UINT8", "FP32")
MAX_IMAGES = 256
"""Images per infer request; larger requests should be split (each image is scheduled alone)."""


class ProtocolError(ValueError):
    """A bad request: HTTP `status`, a stable `reason` code, and a message with the fix."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def error_body(message: str, reason: str) -> dict[str, str]:
    return {"error": message, "reason": reason}


@dataclass
class InferRequest:
    id: str | None
    app: str
    payloads: list[bytes] | None
    """Encoded images (BYTES input), to be decoded off the event loop."""
    images: list[np.ndarray] | None
    """Already-decoded images (UINT8/FP32 input)."""


def b64(s: object, what: str) -> bytes:
    if not isinstance(s, str):
        raise ProtocolError(400, "bad_payload", f"{what} must be a base64 string, got {type(s).__name__}")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(
            400, "bad_payload", f"{what} is not valid base64 ({s[:20]!r}...); encode the file bytes"
        ) from None


def parse_infer(body: object, image_size: int) -> InferRequest:
    """Validate an infer request body; raises ProtocolError naming the bad field and the fix."""
    if not isinstance(body, dict):
        raise ProtocolError(400, "bad_request", "the body must be a JSON object with `inputs` and `parameters`")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(400, "bad_request", f"`parameters` must be an object, got {params!r}")
    app = params.get("app", params.get("application"))
    if not isinstance(app, str) or not app:
        raise ProtocolError(
            400, "missing_app", 'give the application as a request parameter: "parameters": {"app": NAME}'
        )
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(400, "bad_request", "`inputs` must be a list holding exactly one input tensor")
    inp = inputs[0]
    dtype, shape, data = inp.get("datatype"), inp.get("shape"), inp.get("data")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise ProtocolError(400, "bad_shape", f"input shape must be a list of integers, got {shape!r}")
    if not isinstance(data, list):
        raise ProtocolError(
            400, "bad_payload", "input `data` must be a JSON list (binary tensor data is not supported)"
        )
    rid = body.get("id")
    rid = None if rid is None else str(rid)
    if dtype == "BYTES":
        if len(shape) not in (1, 2) or shape[0] != len(data) or (len(shape) == 2 and shape[1] != 1):
            raise ProtocolError(400, "bad_shape", f"BYTES shape {shape} must be [N] with N = len(data) = {len(data)}")
        _check_count(len(data))
        return InferRequest(rid, app, [b64(s, f"inputs[0].data[{i}]") for i, s in enumerate(data)], None)
    if dtype in TENSOR_TYPES:
        n = shape[0] if len(shape) == 4 else 1
        _check_count(n)
        try:
            flat = np.asarray(data, dtype=np.float64 if dtype == "FP32" else np.int64)
        except (TypeError, ValueError, OverflowError):
            raise ProtocolError(400, "bad_payload", f"{dtype} data must be a flat list of numbers") from None
        if flat.ndim != 1:
            raise ProtocolError(
                400, "bad_payload", f"{dtype} data must be flat (row-major), got nesting depth {flat.ndim}"
            )
        try:
            return InferRequest(rid, app, None, tensor_images(dtype, shape, flat, image_size))
        except ImageError as e:
            raise ProtocolError(400, "bad_shape" if "shape" in str(e) else "bad_payload", str(e)) from None
    raise ProtocolError(400, "bad_datatype", f"datatype {dtype!r} is not supported; use BYTES, UINT8 or FP32")


def _check_count(n: int) -> None:
    if not 1 <= n <= MAX_IMAGES:
        raise ProtocolError(400, "bad_shape", f"{n} images in one request; send 1..{MAX_IMAGES}")


def infer_response(model: str, rid: str | None, app: str, results: list[Served]) -> dict[str, Any]:
    n, k = len(results), max(len(s.classes) for s in results)
    probs = np.zeros((n, k), np.float32)
    for i, s in enumerate(results):
        probs[i, : len(s.probs)] = s.probs
    out: dict[str, Any] = {
        "model_name": model,
        "model_version": "1",
        "parameters": {"app": app},
        "outputs": [
            {"name": "probs", "datatype": "FP32", "shape": [n, k], "data": probs.ravel().tolist()},
            {
                "name": "label",
                "datatype": "BYTES",
                "shape": [n],
                "data": [s.classes[int(np.argmax(s.probs))] for s in results],
            },
            {"name": "gamma", "datatype": "INT32", "shape": [n], "data": [s.gamma for s in results]},
            {"name": "deadline_met", "datatype": "BOOL", "shape": [n], "data": [s.deadline_met for s in results]},
            {
                "name": "latency_ms",
                "datatype": "FP32",
                "shape": [n, 3],
                "data": [round(v, 3) for s in results for v in (s.queue_ms, s.exec_ms, s.total_ms)],
            },
        ],
    }
    if rid is not None:
        out["id"] = rid
    return out


def classify_response(s: Served, top_k: int, slo_ms: float) -> dict[str, Any]:
    order = np.argsort(-s.probs, kind="stable")[:top_k]
    return {
        "app": s.app,
        "label": s.classes[int(order[0])],
        "top_k": [{"label": s.classes[int(i)], "prob": round(float(s.probs[i]), 6)} for i in order],
        "gamma": s.gamma,
        "queue_ms": round(s.queue_ms, 3),
        "exec_ms": round(s.exec_ms, 3),
        "total_ms": round(s.total_ms, 3),
        "slo_ms": slo_ms,
        "deadline_met": s.deadline_met,
        "batch_size": s.batch_size,
    }


def model_metadata(name: str, image_size: int, max_classes: int) -> dict[str, Any]:
    return {
        "name": name,
        "versions": ["1"],
        "platform": "otas-pytorch",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "image", "datatype": "UINT8", "shape": [-1, image_size, image_size, 3]},
            {"name": "image", "datatype": "FP32", "shape": [-1, image_size, image_size, 3]},
        ],
        "outputs": [
            {"name": "probs", "datatype": "FP32", "shape": [-1, max_classes]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "gamma", "datatype": "INT32", "shape": [-1]},
            {"name": "deadline_met", "datatype": "BOOL", "shape": [-1]},
            {"name": "latency_ms", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
