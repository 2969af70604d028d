"""The Open Inference Protocol (KServe v2) as one internal request, and the friendly `/v1` answer.

Every transport (HTTP JSON, HTTP with binary tensors, gRPC) turns its message into `InputTensor`s
and calls `build_request`, the one validation; every answer is a list of `OutputTensor`s that the
transport encodes. No web framework, no torch.

Inputs; a request sends exactly one, and names its application in the request parameter `app`:

    image        BYTES [N]            encoded PNG/JPEG files (in JSON `data`: base64 strings)
    image_uint8  UINT8 [N, H, W, 3]   RGB pixels 0..255, row-major
    image_fp32   FP32  [N, H, W, 3]   RGB pixels 0..1, row-major

`image` also takes UINT8 and FP32 tensors, for clients that send every datatype under one name.
Outputs: `probs` FP32 [N, K], `label` BYTES [N], `gamma` INT32 [N], `deadline_met` BOOL [N],
`latency_ms` FP32 [N, 3] (queue, execution, total). Errors: `ProtocolError` (`otas.server.errors`).
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from otas.engine.images import ImageError, tensor_images
from otas.engine.serving import Served
from otas.server.errors import ProtocolError
from otas.server.tensors import element_count, from_raw, split_bytes

SERVER_NAME = "otas"
EXTENSIONS = ["binary_tensor_data", "classification", "statistics", "otas_apps", "otas_metrics"]
"""What HTTP's server metadata names."""
GRPC_EXTENSIONS = [e for e in EXTENSIONS if e != "statistics"]
"""What gRPC's names: the KServe v2 gRPC service has no ModelStatistics method (Triton's own proto adds
one); the statistics extension is served over HTTP only (/v2/models/{model}/stats)."""
VERSIONS = ("", "1")


def check_model(name: str, version: str, served: str) -> None:
    """404 unless `name` is the served model and `version` is empty or 1 (every transport)."""
    if name != served:
        raise ProtocolError(404, "unknown_model", f"model {name!r} is not served here; use {served!r}")
    if version not in VERSIONS:
        raise ProtocolError(404, "unknown_version", f"model {name!r} has no version {version!r}; use 1")


"""Model versions a request may name ("": the server's choice); the model has one, "1"."""
MAX_IMAGES = 256
"""Images per infer request; larger requests should be split (each image is scheduled alone)."""
INPUTS = {"image": ("BYTES", "UINT8", "FP32"), "image_uint8": ("UINT8",), "image_fp32": ("FP32",)}
"""Input name -> the datatypes it takes."""
OUTPUTS = ("probs", "label", "gamma", "deadline_met", "latency_ms")
_INPUTS_HELP = "image (BYTES [N]), image_uint8 (UINT8 [N, H, W, 3]) or image_fp32 (FP32 [N, H, W, 3])"


@dataclass
class InputTensor:
    """One input as a transport received it, not yet validated: elements in `data` (JSON values,
    gRPC typed contents) or the tensor's binary form in `raw` (binary extension, raw contents)."""

    name: Any
    datatype: Any
    shape: Any
    data: Sequence | None = None
    raw: bytes | memoryview | None = None


@dataclass
class InferRequest:
    id: str | None
    app: str
    payloads: list[bytes] | None
    """Encoded images (BYTES input), to be decoded off the event loop."""
    images: list[np.ndarray] | None
    """Already-decoded images (UINT8/FP32 input)."""
    outputs: list[str] | None = None
    """The outputs asked for, in order (None: all of `OUTPUTS`)."""
    classification: dict[str, int] = field(default_factory=dict)
    """Outputs asked for as the classification extension: name -> k (`classify_output`)."""


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[str]


def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("otas")
    except PackageNotFoundError:
        return "0"


def b64(s: object, what: str) -> bytes:
    if not isinstance(s, str):
        raise ProtocolError(400, "bad_payload", f"{what} must be a base64 string, got {type(s).__name__}")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(
            400, "bad_payload", f"{what} is not valid base64 ({s[:20]!r}...); encode the file bytes"
        ) from None


MAX_ID = 1024
"""Characters of a request `id` (it is echoed in the answer)."""


def _first_unknown(outputs: Sequence[Any], most: int = 5) -> list[Any]:
    """The first few distinct names in `outputs` that are not outputs of the model (a request may list
    thousands, of any JSON type: compared by equality, never hashed)."""
    bad: list[Any] = []
    for o in outputs:
        if o not in OUTPUTS and o not in bad:
            bad.append(o)
            if len(bad) == most:
                break
    return bad


def build_request(
    rid: str | None,
    params: Mapping[str, Any],
    inputs: Sequence[InputTensor],
    image_size: int,
    outputs: Sequence[str] | None = None,
    classification: Mapping[str, object] | None = None,
) -> InferRequest:
    """Validate one infer request, whatever carried it; raises ProtocolError naming the bad field
    and the fix. Shapes and sizes are checked against each other before any array is built.
    `classification`: output name -> the `classification` parameter asked for it (Triton's
    classification extension: the top k classes as "score:index:label" strings)."""
    if rid is not None and len(rid) > MAX_ID:
        raise ProtocolError(400, "bad_request", f"`id` has {len(rid)} characters; send at most {MAX_ID}")
    app = params.get("app", params.get("application"))
    if not isinstance(app, str) or not app:
        raise ProtocolError(400, "missing_app", 'give the application as the request parameter "app" (a string)')
    if len(inputs) != 1:
        raise ProtocolError(400, "bad_request", f"send exactly one input tensor, {_INPUTS_HELP}; got {len(inputs)}")
    if outputs is not None and (bad := _first_unknown(outputs)):
        raise ProtocolError(400, "unknown_output", f"outputs {bad} are not outputs of this model; ask for {OUTPUTS}")
    if outputs is not None and len(set(outputs)) < len(outputs):
        twice = sorted(o for o, k in Counter(outputs).items() if k > 1)  # (linear: outputs may be thousands long)
        raise ProtocolError(400, "duplicate_output", f"outputs {twice} are asked for more than once; ask once")
    classes = _classification(classification or {})
    t = inputs[0]
    if not isinstance(t.name, str) or t.name not in INPUTS:
        raise ProtocolError(
            400, "unknown_input", f"input {t.name!r} is not an input of this model; send {_INPUTS_HELP}"
        )
    what, dtype = f"input {t.name!r}", t.datatype
    if dtype not in INPUTS[t.name]:
        raise ProtocolError(
            400, "bad_datatype", f"{what} has datatype {dtype!r}; it takes {' or '.join(INPUTS[t.name])}"
        )
    shape = _shape(t.shape, what)
    if (t.data is None) == (t.raw is None):
        raise ProtocolError(400, "bad_payload", f"{what}: send its elements either in `data` or as binary data")
    outs = None if outputs is None else list(outputs)
    if dtype == "BYTES":
        n = _count(shape[0] if len(shape) == 1 else -1, shape, "[N] (N files, one dimension)")
        payloads = split_bytes(t.raw, n, what) if t.raw is not None else _elements(t.data, n, what)
        return InferRequest(rid, app, payloads, None, outs, classes)
    size = image_size
    data = None if t.data is None else _flat(t.data, shape, what)  # nested as sent: before a 3-D shape gains its 1
    if len(shape) == 3:
        shape = [1, *shape]
    want = f"[N, {size}, {size}, 3] (N RGB images, height × width × channel)"
    _count(shape[0] if len(shape) == 4 and shape[1:] == [size, size, 3] else -1, shape, want)
    flat = from_raw(dtype, t.raw, shape, what) if t.raw is not None else _numbers(dtype, data, shape, what)
    try:
        return InferRequest(rid, app, None, tensor_images(dtype, shape, flat, size), outs, classes)
    except ImageError as e:
        raise ProtocolError(400, "bad_payload", f"{what}: {e}") from None


def _classification(asked: Mapping[str, object]) -> dict[str, int]:
    """Output name -> k, checked: only `probs` holds class scores, and k is a count (1..999999)."""
    out = {}
    for name, k in asked.items():
        if name != "probs":
            raise ProtocolError(
                400, "bad_classification", f"output {name!r} holds no class scores; ask classification of `probs`"
            )
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 999_999:
            msg = f"classification={str(k)[:40]!r} for {name!r}: use a class count in 1..999999"
            raise ProtocolError(400, "bad_classification", msg)
        out[name] = k
    return out


def _shape(shape: object, what: str) -> list[int]:
    if not isinstance(shape, Sequence) or not all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise ProtocolError(400, "bad_shape", f"{what}: shape must be a list of integers >= 0, got {shape!r}")
    return [int(s) for s in shape]


def _count(n: int, shape: list[int], want: str) -> int:
    if n < 0:
        raise ProtocolError(400, "bad_shape", f"shape {shape} is wrong; send {want}")
    if not 1 <= n <= MAX_IMAGES:
        raise ProtocolError(400, "bad_shape", f"{n} images in one request; send 1..{MAX_IMAGES}")
    return n


def _elements(data: Sequence, n: int, what: str) -> list[bytes]:
    """BYTES elements sent as values: base64 strings (JSON) or bytes (gRPC contents)."""
    if len(data) != n:
        raise ProtocolError(400, "bad_shape", f"{what}: BYTES shape [{n}] but {len(data)} elements; make them agree")
    return [x if isinstance(x, bytes) else b64(x, f"{what} element {i}") for i, x in enumerate(data)]


ELEMENT_TYPES = {"UINT8": (int,), "FP32": (int, float)}
"""Python types a JSON (or typed gRPC) element may have, per datatype, as Triton accepts them:
integers for UINT8, numbers for FP32; never strings, booleans or nulls (lists only as the shape's
nesting, `_flat`)."""
_TYPE_NAMES = {int: "integers", float: "numbers"}


def _flat(data: Sequence, shape: list[int], what: str) -> Sequence:
    """`data` as a flat list: sent flat, or nested as the tensor's shape (the protocol allows its
    natural multi-dimensional form, row-major: KServe's own samples nest), each level as long as its
    dimension; any other nesting is a 400."""
    if not data or type(data[0]) is not list or len(shape) < 2:
        return data
    out: Sequence = data
    for depth in range(len(shape) - 1):
        dim, inner = shape[depth], shape[depth + 1]
        if len(out) != element_count(shape[:depth]) * dim or not all(type(x) is list and len(x) == inner for x in out):
            raise ProtocolError(
                400, "bad_payload", f"{what}: data nested otherwise than shape {shape}; send it flat or nested as it"
            )
        out = list(chain.from_iterable(out))
    return out


def _numbers(dtype: str, data: Sequence, shape: list[int], what: str) -> np.ndarray:
    n = element_count(shape)
    if len(data) != n:
        raise ProtocolError(400, "bad_shape", f"{what}: {len(data)} values but shape {shape} needs {n}; check both")
    # OPTIMIZATION: the element types in one C-level pass; `bool` is its own type here, not an int
    found = set(map(type, data))
    if bad := found - set(ELEMENT_TYPES[dtype]):
        names = sorted(t.__name__ for t in bad)
        raise ProtocolError(
            400, "bad_payload",
            f"{what}: {dtype} data must be a list of {_TYPE_NAMES[ELEMENT_TYPES[dtype][-1]]} (flat, or nested as the "
            f"shape), got {names}",
        )  # fmt: skip
    try:
        return np.asarray(data, dtype=np.float64 if dtype == "FP32" else np.int64)
    except (TypeError, ValueError, OverflowError):  # an integer beyond 64 bits, a float beyond float64
        raise ProtocolError(400, "bad_payload", f"{what}: {dtype} values out of range") from None


def top_k(value: object) -> int:
    """A top_k from JSON, a form field or the query string: an integer in 1..999999 (as text, in
    decimal)."""
    if isinstance(value, str) and (v := value.strip()).isascii() and v.isdigit() and len(v) <= 6:
        value = int(v)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 999_999:
        # (a larger k is no different: answers hold at most the task's classes)
        raise ProtocolError(400, "bad_top_k", f"top_k={str(value)[:40]!r}: use an integer in 1..999999")
    return value


def infer_outputs(
    results: list[Served], names: Sequence[str] | None = None, classification: Mapping[str, int] | None = None
) -> list[OutputTensor]:
    """The answer to one request as output tensors: all of `OUTPUTS`, or `names` in that order; an
    output in `classification` (`probs`: k) as Triton's classification extension gives it, BYTES
    [n, min(k, classes)] of "score:index:label", best first."""
    n, k = len(results), max(len(s.classes) for s in results)
    probs = np.zeros((n, k), np.float32)
    for i, s in enumerate(results):
        probs[i, : len(s.probs)] = s.probs
    # the best class of each row (the zero padding past a task's classes never beats a probability)
    labels = [s.classes[i] for s, i in zip(results, probs.argmax(1).tolist(), strict=True)]
    lat = np.round(np.array([(s.queue_ms, s.exec_ms, s.total_ms) for s in results], np.float64), 3)
    out = {
        "probs": OutputTensor("probs", "FP32", [n, k], probs),
        "label": OutputTensor("label", "BYTES", [n], labels),
        "gamma": OutputTensor("gamma", "INT32", [n], np.array([s.gamma for s in results], np.int32)),
        "deadline_met": OutputTensor("deadline_met", "BOOL", [n], np.array([s.deadline_met for s in results])),
        "latency_ms": OutputTensor("latency_ms", "FP32", [n, 3], lat),
    }
    if k_asked := (classification or {}).get("probs"):
        top = min(k_asked, k)
        rows = []
        for s in results:
            order = np.argsort(-s.probs, kind="stable")[:top]
            rows += [f"{float(s.probs[i]):f}:{int(i)}:{s.classes[int(i)]}" for i in order]
        out["probs"] = OutputTensor("probs", "BYTES", [n, top], rows)
    return [out[name] for name in (names or OUTPUTS)]


def json_data(o: OutputTensor) -> list:
    """An output's elements as a flat JSON list."""
    return o.data.ravel().tolist() if isinstance(o.data, np.ndarray) else list(o.data)


def model_metadata(name: str, image_size: int, max_classes: int) -> dict[str, Any]:
    img = [-1, image_size, image_size, 3]
    return {
        "name": name,
        "versions": ["1"],
        "platform": "otas-pytorch",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "image_uint8", "datatype": "UINT8", "shape": img},
            {"name": "image_fp32", "datatype": "FP32", "shape": img},
        ],
        "outputs": [
            {"name": "probs", "datatype": "FP32", "shape": [-1, max_classes]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "gamma", "datatype": "INT32", "shape": [-1]},
            {"name": "deadline_met", "datatype": "BOOL", "shape": [-1]},
            {"name": "latency_ms", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }


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
