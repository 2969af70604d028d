"""The endpoints other than inference (`http_infer.py`): one module-level function each, reading the
engine (a `ServingEngine`), the `ServeConfig` and the metrics from `request.app.state`, where
`create_app` puts them; and the plumbing every endpoint shares.

Every endpoint is `guarded`: a bad request (`ProtocolError`) or a refusal (`NotServed`) becomes
its 4xx/5xx answer with a `reason` code; a client that went away is logged at INFO
(`client_disconnect`) and answered nothing; anything else is logged with its traceback and answered
500. Unknown paths and methods are JSON too (`http_error`), so protocol clients can always parse
an error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from otas.engine.serving import NotServed, ServingEngine
from otas.server.errors import ProtocolError, error_body
from otas.server.guard import ClientGone
from otas.server.protocol import EXTENSIONS, SERVER_NAME, check_model, model_metadata, server_version

if TYPE_CHECKING:
    from otas.server.app import ServeConfig
    from otas.server.metrics import Metrics

log = logging.getLogger("otas.server")
STATUS = {
    "queue_full": 429, "decode_busy": 429, "infeasible": 503, "deadline_unreachable": 503, "shutting_down": 503,
    "unknown_app": 404, "engine_gone": 503, "pixels_busy": 429, "too_large": 413, "headers_too_large": 431,
}  # fmt: skip


def engine_of(request: Request) -> ServingEngine:
    return request.app.state.engine


def config_of(request: Request) -> ServeConfig:
    return request.app.state.config


def error_response(e: ProtocolError | NotServed) -> JSONResponse:
    """A bad request as its status; a refusal as 429 (back off) or 503 (retry, with Retry-After);
    only a failed batch (an `error` other than `shutting_down`) is a 500."""
    if isinstance(e, ProtocolError):
        return JSONResponse(error_body(e.message, e.reason), status_code=e.status)
    status = 500 if e.outcome == "error" and e.reason not in STATUS else STATUS.get(e.reason, 503)
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(error_body(f"{e.outcome}: {e.detail}", e.reason), status_code=status, headers=headers)


def guarded(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except (ProtocolError, NotServed) as e:
            return error_response(e)
        except (ClientGone, ClientDisconnect):
            log.info("client disconnected", extra={"event": "client_disconnect", "path": request.url.path})
            return Response(status_code=499)  # nobody reads it
        except Exception:
            log.exception("unhandled error", extra={"event": "internal_error", "path": request.url.path})
            return JSONResponse(error_body("internal server error; see the server log", "internal"), 500)

    endpoint.__name__ = fn.__name__
    return endpoint


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no route: 404, wrong method: 405) as JSON error bodies."""
    assert isinstance(exc, HTTPException)
    path, status = request.url.path, exc.status_code
    if status == 404:
        body = error_body(f"no endpoint at {path}; the API is under /v2, /v1 and /metrics", "not_found")
    elif status == 405:
        allow = (exc.headers or {}).get("Allow", "")
        body = error_body(f"{request.method} is not allowed on {path}; use {allow}", "method_not_allowed")
    else:
        body = error_body(f"{exc.detail} ({path})", "http_error")
    return JSONResponse(body, status_code=status, headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc, extra={"event": "internal_error", "path": request.url.path})
    return JSONResponse(error_body("internal server error; see the server log", "internal"), 500)


def model_of(request: Request) -> str:
    """The served model's name, if the path names it (and version 1, if it names one); else 404."""
    name = request.path_params["model"]
    check_model(name, request.path_params.get("version", ""), config_of(request).model_name)
    return name


# -- health and metadata ---------------------------------------------------------------------------
@guarded
async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


def is_ready(request: Request) -> bool:
    """The engine admits requests and the server is not draining (`guard.py`)."""
    return engine_of(request).ready and not request.app.state.guard.draining


@guarded
async def ready(request: Request) -> Response:
    ok = is_ready(request)
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@guarded
async def server_meta(request: Request) -> Response:
    return JSONResponse({"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS})


@guarded
async def model_meta(request: Request) -> Response:
    engine, name = engine_of(request), model_of(request)
    kmax = max((len(c) for c in engine.classes.values()), default=0)
    return JSONResponse(model_metadata(name, engine.image_size, kmax))


@guarded
async def model_ready(request: Request) -> Response:
    name, ok = model_of(request), is_ready(request)
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)


@guarded
async def model_config(request: Request) -> Response:
    """Triton's model-configuration extension: not offered (a JSON 404 its clients can parse)."""
    name = model_of(request)
    raise ProtocolError(
        404, "not_supported", f"no model configuration for {name!r}; see GET /v2/models/{name} and GET /v1/config"
    )


@guarded
async def model_stats(request: Request) -> Response:
    """Triton's statistics extension, from the server's metrics."""
    name, m = model_of(request), request.app.state.metrics
    if m is None:
        raise ProtocolError(404, "not_supported", "this server keeps no metrics; see GET /v1/config")
    return JSONResponse({"model_stats": [m.model_stats(name)]})


@guarded
async def list_apps(request: Request) -> Response:
    engine = engine_of(request)
    return JSONResponse(
        [
            {"name": a.name, "slo_ms": a.slo_ms, "utility": a.utility, "task": a.task,
             "classes": engine.classes[a.task]}
            for a in engine.apps.values()
        ]
    )  # fmt: skip


@guarded
async def server_config(request: Request) -> Response:
    config = config_of(request)
    grpc_port = getattr(request.app.state, "grpc_port", None)
    info = {**(config.info or {}), "apps": [asdict(a) for a in engine_of(request).apps.values()]}  # as now served
    return JSONResponse({"model": config.model_name, **info, "grpc_port": grpc_port})


@guarded
async def metrics(request: Request) -> Response:
    m: Metrics | None = request.app.state.metrics
    return Response(generate_latest(m.registry) if m is not None else b"", media_type=CONTENT_TYPE_LATEST)
