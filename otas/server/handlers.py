"""The endpoints: one module-level function each, reading the engine (a `ServingEngine`), the
`ServeConfig` and the metrics from `request.app.state`, where `create_app` puts them.

Every endpoint is `guarded`: a bad request (`ProtocolError`) or a refusal (`NotServed`) becomes
its 4xx/5xx answer with a `reason` code; anything else is logged and answered 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from otas.engine.images import ImageError
from otas.engine.serving import NotServed, Served, ServingEngine
from otas.server.protocol import (
    SERVER_NAME,
    ProtocolError,
    b64,
    classify_response,
    error_body,
    infer_response,
    model_metadata,
    parse_infer,
)

if TYPE_CHECKING:
    from otas.server.app import ServeConfig
    from otas.server.metrics import Metrics

log = logging.getLogger("otas.server")
STATUS = {"queue_full": 429, "infeasible": 503, "deadline_unreachable": 503, "shutting_down": 503}


class BodyTooLarge(Exception):
    """Raised inside a body read once the stream grows past the limit (see `app.limit_body`)."""


def _engine(request: Request) -> ServingEngine:
    return request.app.state.engine


def _config(request: Request) -> ServeConfig:
    return request.app.state.config


def error_response(e: ProtocolError | NotServed) -> JSONResponse:
    """A bad request as its status; a refusal as 429 (back off) or 503 (retry, with Retry-After);
    only a failed batch (an `error` other than `shutting_down`) is a 500."""
    if isinstance(e, ProtocolError):
        return JSONResponse(error_body(e.message, e.reason), status_code=e.status)
    status = 500 if e.outcome == "error" and e.reason != "shutting_down" else STATUS.get(e.reason, 503)
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(error_body(f"{e.outcome}: {e.detail}", e.reason), status_code=status, headers=headers)


def guarded(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except (ProtocolError, NotServed) as e:
            return error_response(e)
        except Exception:
            log.exception("unhandled error", extra={"event": "internal_error", "path": request.url.path})
            return JSONResponse(error_body("internal server error; see the server log", "internal"), 500)

    endpoint.__name__ = fn.__name__
    return endpoint


# -- health and metadata ---------------------------------------------------------------------------
@guarded
async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


@guarded
async def ready(request: Request) -> Response:
    ok = _engine(request).ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@guarded
async def server_meta(request: Request) -> Response:
    return JSONResponse({"name": SERVER_NAME, "version": _version(), "extensions": ["otas_apps", "otas_metrics"]})


@guarded
async def model_meta(request: Request) -> Response:
    engine, name = _engine(request), _model(request)
    kmax = max(len(c) for c in engine.classes.values())
    return JSONResponse(model_metadata(name, engine.image_size, kmax))


@guarded
async def model_ready(request: Request) -> Response:
    name, ok = _model(request), _engine(request).ready
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)


@guarded
async def list_apps(request: Request) -> Response:
    engine = _engine(request)
    return JSONResponse(
        [
            {"name": a.name, "slo_ms": a.slo_ms, "utility": a.utility, "task": a.task,
             "classes": engine.classes[a.task]}
            for a in engine.apps.values()
        ]
    )  # fmt: skip


@guarded
async def server_config(request: Request) -> Response:
    config = _config(request)
    return JSONResponse({"model": config.model_name, **(config.info or {})})


@guarded
async def metrics(request: Request) -> Response:
    m: Metrics | None = request.app.state.metrics
    return Response(generate_latest(m.registry) if m is not None else b"", media_type=CONTENT_TYPE_LATEST)


# -- inference -------------------------------------------------------------------------------------
@guarded
async def infer(request: Request) -> Response:
    engine, config = _engine(request), _config(request)
    arrival = engine.now_ms()
    name = _model(request)
    req = parse_infer(await _json(request, config.max_body_bytes), engine.image_size)
    if req.app not in engine.apps:
        raise ProtocolError(400, "unknown_app", f"application {req.app!r} is not served; known: {sorted(engine.apps)}")
    images = req.images if req.images is not None else await _decode_all(engine, req.payloads or [])
    results = await _serve_all(engine, req.app, images, arrival)
    return JSONResponse(infer_response(name, req.id, req.app, results))


@guarded
async def classify(request: Request) -> Response:
    engine, config = _engine(request), _config(request)
    arrival = engine.now_ms()
    name = request.path_params["app"]
    if name not in engine.apps:
        raise ProtocolError(
            404, "unknown_app", f"application {name!r} is not served; GET /v1/apps lists {sorted(engine.apps)}"
        )
    data, top_k = await _classify_payload(request, config.max_body_bytes, config.top_k)
    image = (await _decode_all(engine, [data]))[0]
    served = (await _serve_all(engine, name, [image], arrival))[0]
    return JSONResponse(classify_response(served, top_k, engine.apps[name].slo_ms))


async def _serve_all(engine: ServingEngine, app: str, images: list[np.ndarray], arrival: float) -> list[Served]:
    futures = []
    try:
        for img in images:
            futures.append(engine.submit(app, img, arrival))
    except NotServed:
        for f in futures:  # already queued: they will be answered; nobody waits for them
            f.add_done_callback(lambda f: f.cancelled() or f.exception())
        raise
    return list(await asyncio.gather(*futures))


async def _decode_all(engine: ServingEngine, payloads: list[bytes]) -> list[np.ndarray]:
    try:
        return list(await asyncio.gather(*(engine.decode(p) for p in payloads)))
    except ImageError as e:
        raise ProtocolError(400, "not_an_image", str(e)) from None


# -- request parts ---------------------------------------------------------------------------------
def _model(request: Request) -> str:
    """The served model's name, if the path names it; else 404."""
    name, served = request.path_params["model"], _config(request).model_name
    if name != served:
        raise ProtocolError(404, "unknown_model", f"model {name!r} is not served here; use {served!r}")
    return name


async def _body(request: Request, limit: int) -> bytes:
    try:
        return await request.body()
    except BodyTooLarge:
        raise ProtocolError(413, "too_large", f"request body is over the limit of {limit} bytes; send less") from None


async def _json(request: Request, limit: int) -> Any:
    raw = await _body(request, limit)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError(400, "bad_json", f"body is not valid JSON ({e}); check it is complete") from None


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
        body = await _json(request, limit)
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("otas")
    except PackageNotFoundError:
        return "0"
