"""The ASGI app (Starlette): KServe v2 endpoints, the friendly `/v1` API, `/metrics`.

Every bad input is a 4xx with a `reason` code and a message naming the value and the fix; the
engine's refusals map to 429 (queue full: back off) or 503 (cannot meet the deadline, or shutting
down); only a failed batch is a 500. Request bodies are capped (413) before they are read whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from otas.engine.engine import Engine, NotServed, Served
from otas.engine.images import ImageError
from otas.server.metrics import Metrics
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

log = logging.getLogger("otas.server")
STATUS = {"queue_full": 429, "infeasible": 503, "deadline_unreachable": 503, "shutting_down": 503}


@dataclass
class ServeConfig:
    """Knobs of the HTTP layer."""

    model_name: str
    """The name served under /v2/models/{model} (the profile's model name)."""
    max_body_bytes: int = 8 << 20
    """Request bodies above this are refused with 413 before being read whole."""
    top_k: int = 3
    """Default number of probabilities /v1/apps/{app}/classify returns."""
    info: dict[str, Any] | None = None
    """Served at /v1/config: policy, scheduler config, profile (the load generator's simulator reads it)."""

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes={self.max_body_bytes}: use at least 1024 (default 8 MiB)")
        if self.top_k < 1:
            raise ValueError(f"top_k={self.top_k}: use an integer >= 1")


class _TooLarge(Exception):
    pass


def _limit_body(app, limit: int):
    """ASGI middleware: 413 on a Content-Length over `limit`; a streamed body that grows past it
    raises _TooLarge inside the handler's read (turned into 413 there)."""

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            body = error_body(
                f"request body of {length.decode()} bytes is over the limit of {limit}; send less", "too_large"
            )
            return await JSONResponse(body, status_code=413)(scope, receive, send)
        seen = 0

        async def capped():
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise _TooLarge()
            return msg

        return await app(scope, capped, send)

    return middleware


def _err(e: ProtocolError | NotServed) -> JSONResponse:
    if isinstance(e, ProtocolError):
        return JSONResponse(error_body(e.message, e.reason), status_code=e.status)
    status = 500 if e.outcome == "error" and e.reason != "shutting_down" else STATUS.get(e.reason, 503)
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(error_body(f"{e.outcome}: {e.detail}", e.reason), status_code=status, headers=headers)


async def _body(request: Request, limit: int) -> bytes:
    try:
        return await request.body()
    except _TooLarge:
        raise ProtocolError(413, "too_large", f"request body is over the limit of {limit} bytes; send less") from None


async def _json(request: Request, limit: int) -> Any:
    raw = await _body(request, limit)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError(400, "bad_json", f"body is not valid JSON ({e}); check it is complete") from None


def create_app(engine: Engine, config: ServeConfig, metrics: Metrics | None = None) -> Starlette:
    """The ASGI app around a (not yet started) engine; the app's lifespan starts and stops it."""
    if metrics is not None:
        engine.observer = metrics
    apps = engine.apps
    limit = config.max_body_bytes
    size = engine.runner.image_size
    kmax = max(len(c) for c in engine.runner.classes.values())

    async def serve_all(app: str, images: list, arrival: float) -> list[Served]:
        futures = []
        try:
            for img in images:
                futures.append(engine.submit(app, img, arrival))
        except NotServed:
            for f in futures:  # already queued: they will be answered; nobody waits for them
                f.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise
        return list(await asyncio.gather(*futures))

    async def decode_all(payloads: list[bytes]) -> list:
        try:
            return list(await asyncio.gather(*(engine.decode(p) for p in payloads)))
        except ImageError as e:
            raise ProtocolError(400, "not_an_image", str(e)) from None

    def check_model(request: Request) -> None:
        name = request.path_params["model"]
        if name != config.model_name:
            raise ProtocolError(404, "unknown_model", f"model {name!r} is not served here; use {config.model_name!r}")

    def ready() -> JSONResponse:
        return JSONResponse({"ready": engine.ready}, status_code=200 if engine.ready else 503)

    async def server_meta(request: Request) -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": _version(), "extensions": ["otas_apps", "otas_metrics"]})

    async def model_meta(request: Request) -> Response:
        check_model(request)
        return JSONResponse(model_metadata(config.model_name, size, kmax))

    async def model_ready(request: Request) -> Response:
        check_model(request)
        return JSONResponse(
            {"name": config.model_name, "ready": engine.ready}, status_code=200 if engine.ready else 503
        )

    async def infer(request: Request) -> Response:
        arrival = engine.now_ms()
        check_model(request)
        req = parse_infer(await _json(request, limit), size)
        if req.app not in apps:
            raise ProtocolError(400, "unknown_app", f"application {req.app!r} is not served; known: {sorted(apps)}")
        images = req.images if req.images is not None else await decode_all(req.payloads or [])
        results = await serve_all(req.app, images, arrival)
        return JSONResponse(infer_response(config.model_name, req.id, req.app, results))

    async def list_apps(request: Request) -> Response:
        return JSONResponse(
            [
                {"name": a.name, "slo_ms": a.slo_ms, "utility": a.utility, "task": a.task,
                 "classes": engine.runner.classes[a.task]}
                for a in apps.values()
            ]
        )  # fmt: skip

    async def classify(request: Request) -> Response:
        arrival = engine.now_ms()
        name = request.path_params["app"]
        if name not in apps:
            raise ProtocolError(
                404, "unknown_app", f"application {name!r} is not served; GET /v1/apps lists {sorted(apps)}"
            )
        data, top_k = await _classify_payload(request, limit, config.top_k)
        image = (await decode_all([data]))[0]
        served = (await serve_all(name, [image], arrival))[0]
        return JSONResponse(classify_response(served, top_k, apps[name].slo_ms))

    async def server_config(request: Request) -> Response:
        return JSONResponse({"model": config.model_name, **(config.info or {})})

    async def metrics_ep(request: Request) -> Response:
        reg = metrics.registry if metrics is not None else None
        return Response(generate_latest(reg) if reg else b"", media_type=CONTENT_TYPE_LATEST)

    def guarded(fn):
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except (ProtocolError, NotServed) as e:
                return _err(e)
            except Exception:
                log.exception("unhandled error", extra={"event": "internal_error", "path": request.url.path})
                return JSONResponse(error_body("internal server error; see the server log", "internal"), 500)

        return endpoint

    live = guarded(lambda r: _const({"live": True}))
    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", guarded(lambda r: _const(ready()))),
        Route("/v2", guarded(server_meta)),
        Route("/v2/models/{model}", guarded(model_meta)),
        Route("/v2/models/{model}/ready", guarded(model_ready)),
        Route("/v2/models/{model}/infer", guarded(infer), methods=["POST"]),
        Route("/v1/apps", guarded(list_apps)),
        Route("/v1/apps/{app}/classify", guarded(classify), methods=["POST"]),
        Route("/v1/config", guarded(server_config)),
        Route("/metrics", guarded(metrics_ep)),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await engine.start()
        log.info("engine started", extra={"event": "start", "model": config.model_name, "apps": sorted(apps)})
        yield
        await engine.stop()
        log.info("engine stopped", extra={"event": "stop", "batches": engine.batches})

    star = Starlette(routes=routes, lifespan=lifespan)
    star.add_middleware(lambda app: _limit_body(app, limit))
    return star


async def _const(value: Any) -> Response:
    return value if isinstance(value, Response) else JSONResponse(value)


async def _classify_payload(request: Request, limit: int, default_k: int) -> tuple[bytes, int]:
    """The image bytes and top_k of a classify request: multipart (field `image` or `file`),
    JSON {"image": base64, "top_k": k}, or a raw image/* body."""
    ctype = request.headers.get("content-type", "")
    k: Any = request.query_params.get("top_k", default_k)
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=limit)
        except _TooLarge:
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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    _skip = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in self._skip})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for name in ("otas", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level.upper())
        lg.propagate = False


class ServerThread:
    """Uvicorn on loopback in a background thread (tests, benchmarks): `with ServerThread(app) as s: s.url`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, **kwargs: Any):
        import uvicorn

        kwargs.setdefault("log_level", "warning")
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, lifespan="on", **kwargs))
        self.thread = threading.Thread(target=self.server.run, name="otas-uvicorn", daemon=True)
        self.url = ""

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start; see the log above")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)

    def __exit__(self, *exc: object) -> None:
        self.stop()
