"""The inference endpoints over HTTP: KServe v2 infer (JSON or binary tensors, `http_codec.py`) and
the friendly `/v1/apps/{app}/classify`. Both run through `inference.run`, as gRPC does.

Bodies arrive whole (`guard.py` read them within its limits); a large JSON body is parsed in the
parser process (`parsing.py`), never on the event loop. While a request waits for the engine, a
client disconnect cancels it: its images leave the queues, and the server answers nobody."""

from __future__ import annotations

import logging
import time
from typing import Any

from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from otas.server.errors import ProtocolError
from otas.server.guard import ARRIVAL, BODY, TICKET, body_of, until_disconnect
from otas.server.handlers import config_of, engine_of, guarded, model_of
from otas.server.http_codec import HEADER_LENGTH, check_values, encode_infer, header_bytes, parse_classify, parse_infer
from otas.server.inference import check_app, decode_all, delivered, run
from otas.server.parsing import JsonParser
from otas.server.protocol import classify_response, infer_outputs, top_k
from otas.server.waited import WAITED, waited_ms

log = logging.getLogger("otas.server")


def parser_of(request: Request) -> JsonParser:
    return request.app.state.parser or JsonParser(0)


def arrival_of(request: Request) -> float:
    """When the request's first byte was read (`connections.py`), on the engine's clock, less the
    wait its client states (`waited.py`): its deadline runs from there, so time spent waiting for
    the event loop counts, and so does time spent before it was sent."""
    now = engine_of(request).now_ms()
    t = request.scope.get(ARRIVAL)
    first = now if t is None else now - max(time.monotonic() - t, 0.0) * 1e3
    return first - waited_ms(request.headers.getlist(WAITED))


def hand_off(request: Request):
    """Called when the request leaves the front end for the scheduler: its front-door place is freed."""
    ticket = request.scope.get(TICKET)
    return ticket.release if ticket is not None else None


@guarded
async def infer(request: Request) -> Response:
    engine = engine_of(request)
    arrival = arrival_of(request)
    name = model_of(request)
    _identity_encoding(request)
    body = await body_of(request)
    header = request.headers.get(HEADER_LENGTH)
    # here, not in the parser: a refused body never travels there (a header length the body cannot hold neither)
    n = None if header is None else header_bytes(header, len(body))
    json_bytes = len(body) if n is None else n  # binary: cheap
    check_values(body if n is None else memoryview(body)[:n], engine.image_size)
    # counted=True: check_values ran above wherever parse_infer would run it
    parsed = await parser_of(request).run(parse_infer, body, header, engine.image_size, True, json_bytes=json_bytes)
    req = parsed.request
    results = await until_disconnect(request.receive, run(engine, req, arrival, hand_off(request)))
    outputs = infer_outputs(results, req.outputs, req.classification)
    content, header_length = encode_infer(name, req, outputs, parsed.binary)
    delivered(engine, arrival, results)
    if header_length is None:
        return Response(content, media_type="application/json")
    headers = {HEADER_LENGTH: str(header_length)}
    return Response(content, media_type="application/octet-stream", headers=headers)


@guarded
async def classify(request: Request) -> Response:
    engine, config = engine_of(request), config_of(request)
    arrival = arrival_of(request)
    name = request.path_params["app"]
    check_app(engine, name, status=404)
    slo_ms = engine.apps[name].slo_ms  # (the application may be changed or removed while this runs)
    _identity_encoding(request)
    data, k = await _classify_payload(request, config.top_k)

    async def work():
        done = hand_off(request)
        images = await decode_all(engine, name, [data], arrival, done)
        if done is not None:
            done()
        return (await engine.submit_many(name, images, arrival))[0]

    served = await until_disconnect(request.receive, work())
    body = classify_response(served, k, slo_ms)
    delivered(engine, arrival, [served])
    return JSONResponse(body)


def _identity_encoding(request: Request) -> None:
    """415 unless the body is plain: every Content-Encoding header, and every coding listed in one
    (`identity, gzip` is gzip), must be identity."""
    codings = [c.strip().lower() for v in request.headers.getlist("content-encoding") for c in v.split(",")]
    if bad := [c for c in codings if c not in ("", "identity")]:
        enc = ", ".join(bad)[:100]
        raise ProtocolError(415, "unsupported_encoding", f"Content-Encoding {enc!r} is not accepted; send it plain")
    if len(request.headers.getlist(HEADER_LENGTH)) > 1:
        raise ProtocolError(400, "bad_header_length", f"{HEADER_LENGTH} given more than once; send it once")


def _check_closed(ctype: str, body: bytes | bytearray) -> None:
    """400 `bad_multipart` for a multipart body that stops before its closing delimiter (`--BOUNDARY--`), an
    empty one included: the parser then yields no part at all, which would otherwise read as a request without
    an image. `ctype`: the Content-Type header as sent (a boundary is case-sensitive), parsed as the multipart
    parser parses it (a body without a boundary never gets here: the parser refuses it)."""
    boundary = parse_options_header(ctype)[1].get(b"boundary", b"")
    closing = b"--" + boundary + b"--"
    if body.find(closing) < 0:  # (only on this error path: a scan of the body)
        raise ProtocolError(
            400, "bad_multipart", f"the multipart body ends before its closing delimiter {closing.decode('latin-1')}; "
            "send the whole body"
        )  # fmt: skip


async def _classify_payload(request: Request, default_k: int) -> tuple[bytes, int]:
    """The image bytes and top_k of a classify request: multipart (field `image` or `file`),
    JSON {"image": base64, "top_k": k}, or a raw image/* body."""
    ctype = request.headers.get("content-type", "").strip().lower()  # media types are case-insensitive
    k: Any = request.query_params.get("top_k", default_k)
    if ctype.startswith("multipart/form-data"):
        limit = config_of(request).max_body_bytes
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=limit)
        except Exception as e:  # starlette raises its own errors for malformed multipart
            raise ProtocolError(
                400, "bad_multipart", f"malformed multipart body ({str(e)[:200]}); send one file field `image`"
            ) from None
        up = form.get("image") or form.get("file")
        if not isinstance(up, UploadFile):
            _check_closed(request.headers.get("content-type", ""), request.scope.get(BODY) or b"")
            raise ProtocolError(400, "missing_image", "send the image as a multipart file field named `image`")
        data = await up.read()
        k = form.get("top_k", k)
    elif ctype.startswith("application/json"):
        data, sent_k = await parser_of(request).run(parse_classify, await body_of(request))
        k = k if sent_k is None else sent_k
    elif ctype.startswith(("image/", "application/octet-stream")):
        data = await body_of(request)
    else:
        raise ProtocolError(
            415,
            "unsupported_media_type",
            f"content type {ctype!r}: send multipart/form-data, application/json or image/*",
        )
    return data, top_k(k)
