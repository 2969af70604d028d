"""The HTTP infer body, both ways: JSON, or a JSON header followed by binary tensor data (the
protocol's binary tensor extension, which tritonclient uses by default). No web framework.

Request: with the header `Inference-Header-Content-Length: L` the first L bytes of the body are
the JSON header and the rest is the inputs' binary data, back to back in input order; an input sent
this way has the parameter `binary_data_size` (its byte count) and no `data`. Response: the outputs
asked for in binary (the request parameter `binary_data_output`, or an output's own parameter
`binary_data`, which wins) follow the JSON header the same way, each with `binary_data_size`; the
response then carries `Inference-Header-Content-Length` and is `application/octet-stream`.

Parsing is a pure function of the body, so a large JSON body can be parsed in another process
(`parsing.py`). Before parsing, a body carrying more JSON values than any valid request could is
refused (counting commas is ~100x cheaper than parsing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from otas.server.errors import ProtocolError
from otas.server.headers import byte_count
from otas.server.protocol import (
    MAX_IMAGES,
    OUTPUTS,
    InferRequest,
    InputTensor,
    OutputTensor,
    b64,
    build_request,
    json_data,
)
from otas.server.tensors import to_raw

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class HttpInfer:
    request: InferRequest
    binary: dict[str, bool]
    """Output name -> send its data in binary after the JSON header."""


def loads(raw: bytes | memoryview) -> Any:
    """JSON -> Python, by orjson (about 7x faster than `json` on arrays of numbers, and it reads a
    memoryview without a copy). Every way a body can fail to be JSON we serve is a 400 `bad_json`:
    syntax, encoding (UTF-8 only, no BOM), nesting over 1,024 deep, and numbers no 64-bit type holds
    (NaN, Infinity, 1e999, an integer of thousands of digits; RFC 8259 has no non-finite numbers)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        text = str(e)
        if text.startswith("depth limit"):
            msg = "body is JSON nested too deeply; send a flat request"
        elif text.startswith("number is infinity"):
            msg = "body holds a number no 64-bit type holds (over 1.8e308, or thousands of digits); send finite numbers"
        else:
            msg = f"body is not valid JSON ({text[:200]}); check it is complete and UTF-8"
        raise ProtocolError(400, "bad_json", msg) from None


def check_values(raw: bytes | memoryview, image_size: int) -> None:
    """Refuse, before parsing, JSON with more values than the largest valid request carries."""
    most = MAX_IMAGES * image_size * image_size * 3 + 4096
    if len(raw) > most and (n := bytes(raw).count(b",")) > most:  # bytes(b) of bytes is b: no copy
        raise ProtocolError(
            413, "too_many_values",
            f"the JSON holds about {n} values and a request carries at most {most}; send fewer images, as "
            "binary data (Inference-Header-Content-Length) or as encoded files",
        )  # fmt: skip


def header_bytes(header_length: str, body_bytes: int) -> int:
    """The JSON header's byte count an Inference-Header-Content-Length gives, checked against the body's size;
    ProtocolError (400 bad_header_length) for a value that is not a byte count in 1..`body_bytes`."""
    h = byte_count(header_length.strip())
    if h is None or not 0 < h <= body_bytes:
        raise ProtocolError(
            400, "bad_header_length",
            f"{HEADER_LENGTH} is {header_length[:40]!r} but the body has {body_bytes} bytes; "
            "give the byte length of the JSON header that starts the body",
        )  # fmt: skip
    return h


def parse_infer(body: bytes, header_length: str | None, image_size: int, counted: bool = False) -> HttpInfer:
    """An infer request body (and its Inference-Header-Content-Length, if any) -> the request.
    Declared binary sizes are checked against the bytes present before anything is sliced.
    `counted`: the caller already ran `check_values` on the JSON part (the HTTP handler does, on the
    event loop, so that a refused body never travels to a parser process)."""
    view = memoryview(body)
    if header_length is None:
        if not counted:
            check_values(body, image_size)
        head, tail = loads(body), view[len(view) :]
    else:
        h = header_bytes(header_length, len(view))
        if not counted:
            check_values(view[:h], image_size)
        head, tail = loads(view[:h]), view[h:]
    if not isinstance(head, dict):
        raise ProtocolError(400, "bad_request", "the JSON header must be an object with `inputs` and `parameters`")
    params = _object(head.get("parameters"), "parameters")
    inputs = head.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise ProtocolError(400, "bad_request", "`inputs` must be a list of input tensor objects")
    tensors, offset = [], 0
    for i, inp in enumerate(inputs):
        size, data, raw = _object(inp.get("parameters"), f"inputs[{i}].parameters").get("binary_data_size"), None, None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(400, "bad_binary_size", f"inputs[{i}] binary_data_size={size!r}: use a byte count")
            if "data" in inp:
                raise ProtocolError(400, "bad_payload", f"inputs[{i}] has both `data` and binary_data_size; send one")
            if offset + size > len(tail):
                raise ProtocolError(
                    400, "bad_binary_size",
                    f"inputs declare at least {offset + size} bytes of binary data but {len(tail)} follow the JSON "
                    "header; send every input's bytes, or fix binary_data_size",
                )  # fmt: skip
            raw, offset = tail[offset : offset + size], offset + size
        elif "data" in inp:
            data = inp["data"]
            if not isinstance(data, list):
                raise ProtocolError(400, "bad_payload", f"inputs[{i}].data must be a JSON list (row-major)")
        tensors.append(InputTensor(inp.get("name"), inp.get("datatype"), inp.get("shape"), data, raw))
    if offset != len(tail):
        raise ProtocolError(
            400, "bad_binary_size",
            f"{len(tail)} bytes of binary data follow the JSON header but the inputs' binary_data_size add up to "
            f"{offset}; make them agree",
        )  # fmt: skip
    outputs = head.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs)):
        raise ProtocolError(400, "bad_request", '`outputs` must be a list of objects {"name": ...}')
    rid = _request_id(head.get("id"))
    names = None if outputs is None else [o.get("name") for o in outputs]
    oparams = [_object(o.get("parameters"), f"outputs[{i}].parameters") for i, o in enumerate(outputs or [])]
    # (a name that is no string is refused as an unknown output by build_request)
    classes = {n: p["classification"] for n, p in zip(names or [], oparams, strict=True)
               if isinstance(n, str) and "classification" in p}  # fmt: skip
    req = build_request(rid, params, tensors, image_size, names, classes)
    default = _flag(params.get("binary_data_output", False), "binary_data_output")
    binary = {name: default for name in OUTPUTS}
    for i, (o, p) in enumerate(zip(outputs or [], oparams, strict=True)):
        if (b := p.get("binary_data")) is not None:
            binary[o["name"]] = _flag(b, f"outputs[{i}] binary_data")
    return HttpInfer(req, binary)


def encode_infer(model: str, req: InferRequest, outputs: list[OutputTensor], binary: dict[str, bool]):
    """(body, JSON header length or None when no output is binary)."""
    outs, raws = [], []
    for o in outputs:
        t: dict[str, Any] = {"name": o.name, "datatype": o.datatype, "shape": o.shape}
        if binary.get(o.name):
            raws.append(to_raw(o.datatype, o.data))
            t["parameters"] = {"binary_data_size": len(raws[-1])}
        else:
            t["data"] = json_data(o)
        outs.append(t)
    head: dict[str, Any] = {"model_name": model, "model_version": "1", "parameters": {"app": req.app}, "outputs": outs}
    if req.id is not None:
        head["id"] = req.id
    body = orjson.dumps(head)
    return (body + b"".join(raws), len(body)) if raws else (body, None)


def parse_classify(body: bytes) -> tuple[bytes, Any]:
    """A JSON classify body {"image": base64, "top_k": k} -> (image bytes, top_k or None)."""
    obj = loads(body)
    if not isinstance(obj, dict) or "image" not in obj:
        raise ProtocolError(400, "missing_image", 'send JSON {"image": "<base64 PNG/JPEG>", "top_k": 3}')
    return b64(obj["image"], "image"), obj.get("top_k")


def _request_id(v: object) -> str | None:
    """The request's `id`, echoed in the answer: a string (a number is taken as its text)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    raise ProtocolError(400, "bad_request", f"`id` must be a string; got a JSON {type(v).__name__}")


def _object(v: object, what: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ProtocolError(400, "bad_request", f"`{what}` must be a JSON object, got {v!r}")
    return v


def _flag(v: object, what: str) -> bool:
    if not isinstance(v, bool):
        raise ProtocolError(400, "bad_request", f"{what}={v!r}: use true or false")
    return v
