"""The inference endpoints over HTTP: KServe v2 infer (JSON or binary tensors, `http_codec.py`) and
the friendly `/v1/apps/{app}/classify`. Both run through `inference.run`, as gRPC does."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from otas.server.errors import ProtocolError
from otas.server.handlers import BodyTooLarge, config_of, engine_of, guarded, model_of
from otas.server.http_codec import HEADER_LENGTH, encode_infer, loads, parse_infer
from otas.server.inference import check_app, decode_all, run, serve_all
from otas.server.protocol import b64, classify_response, infer_outputs


@guarded
async def infer(request: Request) -> Response:
    engine, config = engine_of(request), config_of(request)
    arrival = engine.now_ms()
    name = model_of(request)
    _identity_encoding(request)
    body = await _body(request, config.max_body_bytes)
    parsed = parse_infer(body, request.headers.get(HEADER_LENGTH), engine.image_size)
    req = parsed.request
    results = await run(engine, req, arrival)
    content, header_length = encode_infer(name, req, infer_outputs(results, req.outputs), parsed.binary)
    if header_length is None:
        return Response(content, media_type="application/json")
    headers = {HEADER_LENGTH: str(header_length)}
    return Response(content, media_type="application/octet-stream", headers=headers)


@guarded
async def classify(request: Request) -> Response:
    engine, config = engine_of(request), config_of(request)
    arrival = engine.now_ms()
    name = request.path_params["app"]
    check_app(engine, name, status=404)
    data, top_k = await _classify_payload(request, config.max_body_bytes, config.top_k)
    image = (await decode_all(engine, [data]))[0]
    served = (await serve_all(engine, name, [image], arrival))[0]
    return JSONResponse(classify_response(served, top_k, engine.apps[name].slo_ms))


def _identity_encoding(request: Request) -> None:
    enc = request.headers.get("content-encoding", "identity").strip().lower()
    if enc not in ("", "identity"):
        raise ProtocolError(415, "unsupported_encoding", f"Content-Encoding {enc!r} is not accepted; send it plain")


async def _body(request: Request, limit: int) -> bytes:
    try:
        return await request.body()
    except BodyTooLarge:
        raise ProtocolError(413, "too_large", f"request body is over the limit of {limit} bytes; send less") from None


async def _classify_payload(request: Request, limit: int, default_k: int) -> tuple[bytes, int]:
    """The image bytes and top_k of a classify request: multipart (field `image` or `file`),
    JSON {"image": base64, "top_k": k}, or a raw image/* body."""
    ctype = request.headers.get("content-type", "")
    k: Any = request.query_params.get("top_k", default_k)
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=limit)
        except BodyTooLarge:
            raise ProtocolError(413, "too_large", f"upload is over the limit of {limit} bytes; send less") from None
        except Exception as e:  # starlette raises its own errors for malformed multipart
            raise ProtocolError(
                400, "bad_multipart", f"malformed multipart body ({e}); send one file field `image`"
            ) from None
        up = form.get("image") or form.get("file")
        if not isinstance(up, UploadFile):
            raise ProtocolError(400, "missing_image", "send the image as a multipart file field named `image`")
        data = await up.read()
        k = form.get("top_k", k)
    elif ctype.startswith("application/json"):
        body = loads(await _body(request, limit))
        if not isinstance(body, dict) or "image" not in body:
            raise ProtocolError(400, "missing_image", 'send JSON {"image": "<base64 PNG/JPEG>", "top_k": 3}')
        data = b64(body["image"], "image")
        k = body.get("top_k", k)
    elif ctype.startswith(("image/", "application/octet-stream")):
        data = await _body(request, limit)
    else:
        raise ProtocolError(
            415,
            "unsupported_media_type",
            f"content type {ctype!r}: send multipart/form-data, application/json or image/*",
        )
    try:
        k = int(k)
        if k < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise ProtocolError(400, "bad_top_k", f"top_k={k!r}: use an integer >= 1") from None
    return data, k
