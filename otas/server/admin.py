"""Applications at run time: POST /v1/apps registers one, PUT /v1/apps/{app} changes one, DELETE
/v1/apps/{app} removes one after draining its queue. The scheduler serves the change from its next
decision; nothing restarts.

Off unless the server has an admin token (`otas serve --admin-token T` or $OTAS_ADMIN_TOKEN): then
every call must carry `Authorization: Bearer T` (a missing or wrong token: 401); without a token
the endpoints answer 403. Changes are written to the package's apps.yaml atomically (write a
temporary file, then rename it), so a restart serves the same applications. One change at a time.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from otas import jsonio
from otas.apps import MAX_APPS
from otas.config import parse_apps
from otas.profile.table import unmeetable_slos
from otas.server.errors import ProtocolError
from otas.server.handlers import config_of, engine_of, guarded
from otas.types import App

log = logging.getLogger("otas.server")


def _authorize(request: Request) -> None:
    token = config_of(request).admin_token
    if not token:
        raise ProtocolError(
            403, "admin_disabled", "the admin API is off; start the server with --admin-token or $OTAS_ADMIN_TOKEN"
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ProtocolError(401, "unauthorized", "missing or wrong admin token; send 'Authorization: Bearer TOKEN'")
    if not hasattr(engine_of(request), "set_apps"):
        raise ProtocolError(501, "not_supported", "applications cannot be changed at run time on this backend")


def _lock(request: Request) -> asyncio.Lock:
    state = request.app.state
    if getattr(state, "admin_lock", None) is None:
        state.admin_lock = asyncio.Lock()
    return state.admin_lock


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = jsonio.loads_unique(await request.body())
    except jsonio.DuplicateKeyError as e:  # as the apps YAML loader: which of two SLOs was meant is no guess
        raise ProtocolError(400, "invalid_app", str(e)) from None
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: thousands of nested brackets
        raise ProtocolError(400, "bad_json", "the body is not JSON; send {name, slo_ms, utility, task}") from None
    if not isinstance(body, dict):
        raise ProtocolError(400, "invalid_app", "send a JSON object {name, slo_ms, utility, task}")
    return body


def _parse(entry: dict[str, Any]) -> App:
    try:
        app = parse_apps([entry], source="request")[0]
    except ValueError as e:
        raise ProtocolError(400, "invalid_app", str(e)) from None
    return app


def _check(request: Request, apps: list[App], app: App) -> None:
    """The model and its profile serve `app`'s task (at the policy's γ, for a fixed-γ policy)."""
    engine = engine_of(request)
    from otas.server.main import check_servable

    sched = engine.scheduler
    try:
        check_servable(engine.runner, sched.profiles[sched.model], apps, sched.policy.name)
    except ValueError as e:
        raise ProtocolError(400, "unknown_task", str(e)) from None


def _describe(request: Request, app: App) -> dict[str, Any]:
    """The application as served, with `warnings` where its SLO is below the fastest batch of one in the
    profile (accepted: the device may run faster than profiled; but as profiled, each request is refused)."""
    out = {**asdict(app), "classes": engine_of(request).classes[app.task]}
    sched = engine_of(request).scheduler
    if warnings := unmeetable_slos([app], [sched.profiles[sched.model]]):
        log.warning(warnings[0], extra={"event": "config_warning", "app": app.name})
        out["warnings"] = warnings
    return out


async def _apply(request: Request, apps: list[App], old: list[App]) -> None:
    """Serve `apps` and write them to the package's apps.yaml; if the write fails, serve `old` again."""
    engine, path = engine_of(request), config_of(request).apps_file
    try:
        engine.set_apps(apps)
    except ValueError as e:
        raise ProtocolError(400, "invalid_app", str(e)) from None
    if path is None:
        return
    from otas.models.package import save_apps

    try:
        await asyncio.to_thread(save_apps, path, apps)
    except OSError as e:
        engine.set_apps(old)
        log.error("apps not saved", extra={"event": "apps_save_failed", "path": str(path), "error": str(e)})
        raise ProtocolError(500, "persist_failed", f"could not write {path} ({e}); nothing changed") from None


@guarded
async def create_app_entry(request: Request) -> Response:
    _authorize(request)
    app = _parse(await _body(request))
    async with _lock(request):
        engine = engine_of(request)
        old = list(engine.apps.values())
        if app.name in engine.apps:
            msg = f"application {app.name!r} exists; PUT /v1/apps/{app.name} to change it"
            raise ProtocolError(409, "app_exists", msg)
        if len(old) >= MAX_APPS:
            msg = f"{len(old)} applications are served, the most one server takes; DELETE one first"
            raise ProtocolError(409, "too_many_apps", msg)
        _check(request, [*old, app], app)
        await _apply(request, [*old, app], old)
    log.info("app registered", extra={"event": "app_added", "app": app.name, "slo_ms": app.slo_ms, "task": app.task})
    return JSONResponse(_describe(request, app), status_code=201)


@guarded
async def update_app_entry(request: Request) -> Response:
    _authorize(request)
    name = request.path_params["app"]
    body = await _body(request)
    if body.get("name", name) != name:
        raise ProtocolError(400, "invalid_app", f"the body names {body['name']!r} but the path {name!r}; rename by "
                            "DELETE and POST")  # fmt: skip
    async with _lock(request):
        engine = engine_of(request)
        if name not in engine.apps:
            raise ProtocolError(404, "unknown_app", f"application {name!r} is not served; POST /v1/apps registers it")
        old = list(engine.apps.values())
        app = _parse({**asdict(engine.apps[name]), **body, "name": name})
        open_requests = getattr(engine, "open_requests", lambda _: 0)(name)
        if app.task != engine.apps[name].task and open_requests:
            raise ProtocolError(
                409, "app_busy",
                f"application {name!r} has {open_requests} requests accepted for task {engine.apps[name].task!r}; "
                "its task can change once they are answered (retry), or DELETE it (it drains) and POST it anew",
            )  # fmt: skip
        apps = [app if a.name == name else a for a in old]
        _check(request, apps, app)
        await _apply(request, apps, old)
    log.info("app updated", extra={"event": "app_updated", "app": app.name, "slo_ms": app.slo_ms, "task": app.task})
    return JSONResponse(_describe(request, app))


@guarded
async def delete_app_entry(request: Request) -> Response:
    _authorize(request)
    name = request.path_params["app"]
    async with _lock(request):
        engine, path = engine_of(request), config_of(request).apps_file
        if name not in engine.apps:
            raise ProtocolError(404, "unknown_app", f"application {name!r} is not served; known: {sorted(engine.apps)}")
        if path is not None:  # the file first: a crash while draining still ends without it
            from otas.models.package import save_apps

            rest = [a for a in engine.apps.values() if a.name != name]
            try:
                await asyncio.to_thread(save_apps, path, rest)
            except OSError as e:
                raise ProtocolError(500, "persist_failed", f"could not write {path} ({e}); nothing changed") from None
        drained = await engine.remove_app(name)
        if (metrics := getattr(request.app.state, "metrics", None)) is not None:
            metrics.forget(name)  # its series leave /metrics (many tenants come and go)
    log.info("app removed", extra={"event": "app_removed", "app": name, "drained": drained})
    return JSONResponse({"removed": name, "drained": drained})
