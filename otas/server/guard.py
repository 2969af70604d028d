"""Request bodies under guard: an ASGI middleware that reads every body itself, within limits, before
the app sees it; and the state it shares with the connection layer (`connections.py`).

Headers that came whole but over `max_header_kb` are a 431 (`connections.py` refuses them when they
come in pieces). A body is refused before a byte of it is read when its Content-Length is over the body limit (413)
or would take the bytes being received or held by all requests over `max_inflight_bytes` (503
`in_flight_full`; bodies of `SMALL` bytes or less are not counted, so ordinary requests always get
in: their number is bounded by the connection cap). It is read into one buffer of its declared size
(big buffers come from mmap and go back to the OS when freed: `memory.py`) and must arrive whole
within `body_timeout_s` of the headers (408 `body_timeout`). A client that disconnects mid-body is
logged at INFO (`client_disconnect`) and answered nothing. Once shutdown begins (`Guard.drain`)
every response says `Connection: close`; when the listener closes (`Guard.close`), bodies still
arriving are answered 503 `shutting_down`. The app then receives the body in one message, and
later `receive()` calls reach the server, so a handler can notice a disconnect (`until_disconnect`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.responses import JSONResponse

from otas.config import HttpConfig
from otas.server import memory
from otas.server.admission import FrontDoor, Ticket
from otas.server.errors import error_body
from otas.server.headers import byte_count

log = logging.getLogger("otas.server")
TICKET, ARRIVAL = "otas.ticket", "otas.arrival_s"
"""Scope keys the connection layer sets: an admitted inference request's `Ticket`, and when its
first byte was read (`time.monotonic()`): its deadline runs from there."""
BODY = "otas.body"
"""The scope key of the request's whole body, read here (`body_of`)."""
SMALL = 64 << 10
"""Bodies up to this size are not counted in flight (their count is bounded by the connection cap)."""


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class Guard:
    """Shared by the uvicorn protocol (connections) and the body middleware (bytes in flight)."""

    def __init__(self, http: HttpConfig | None = None, max_body_bytes: int | None = None):
        self.http = http or HttpConfig()
        self.max_body = max_body_bytes or self.http.max_body_bytes
        self.connections = 0
        self.inflight = 0
        """Body bytes reserved by requests being received or handled."""
        self.draining = False
        self.closing = False
        self.door: FrontDoor | None = None
        """Admission of inference requests on arrival (`admission.py`); set by `create_app`."""
        self._reads: set[asyncio.Timeout] = set()
        self._peak, self._trimmed = 0, 0.0

    def reserve(self, n: int) -> bool:
        if n > SMALL and self.inflight + n > self.http.max_inflight_bytes:
            return False
        self.inflight += n
        self._peak = max(self._peak, self.inflight)
        return True

    def release(self, n: int) -> None:
        self.inflight -= n
        # Give big freed buffers back to the OS once the burst is over (at most once a second).
        if self.inflight == 0 and self._peak > 4 * SMALL and time.monotonic() - self._trimmed > 1.0:
            self._peak, self._trimmed = 0, time.monotonic()
            memory.trim_soon()

    def drain(self) -> None:
        """Shutdown begins: readiness fails and responses close their connections."""
        self.draining = True

    def close(self) -> None:
        """The listener closes: bodies still arriving are refused (503 shutting_down)."""
        self.draining = self.closing = True
        now = asyncio.get_running_loop().time()
        for t in list(self._reads):
            t.reschedule(now)


def error(status: int, reason: str, message: str, close: bool = True) -> JSONResponse:
    headers = {"Connection": "close"} if close else {}
    if status in (429, 503):
        headers["Retry-After"] = "1"
    return JSONResponse(error_body(message, reason), status_code=status, headers=headers)


def in_flight_message(guard: Guard) -> str:
    return (f"{guard.inflight} bytes of request bodies are in flight and this server holds at most "
            f"{guard.http.max_inflight_bytes}; retry shortly")  # fmt: skip


def guard_bodies(app, guard: Guard):
    """The ASGI middleware (see the module docstring)."""

    async def middleware(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        ticket: Ticket | None = scope.get(TICKET)
        try:
            return await guarded(scope, receive, send)
        finally:  # a request ends the front door's hold on it however it ends (released once)
            if ticket is not None:
                ticket.release()

    async def guarded(scope, receive, send):
        send = _closing(send, guard)
        limit = guard.http.max_header_kb << 10
        line = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
        if sum(len(k) + len(v) + 4 for k, v in scope["headers"]) + line > limit:
            msg = f"request line and headers are over {guard.http.max_header_kb} KiB; send fewer or shorter headers"
            return await error(431, "headers_too_large", msg)(scope, receive, send)  # (a head that came whole)
        headers = dict(scope["headers"])
        length, chunked = headers.get(b"content-length"), b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if length is None and not chunked or length == b"0":
            return await app(scope, receive, send)  # no body
        size = byte_count(length) if length is not None else SMALL
        if size is None:
            msg = f"Content-Length {length.decode(errors='replace')!r} is not a byte count"
            return await error(400, "bad_request", msg)(scope, receive, send)
        if size > guard.max_body:
            msg = f"request body of {size} bytes is over the limit of {guard.max_body}; send less"
            return await error(413, "too_large", msg)(scope, receive, send)
        if not guard.reserve(size):
            return await error(503, "in_flight_full", in_flight_message(guard))(scope, receive, send)
        reserved = [size]
        try:
            body = await _read(receive, guard, size if length is not None else None, reserved)
            if isinstance(body, JSONResponse):
                return await body(scope, receive, send)
            if body is None:
                log.info("client disconnected mid-body", extra={"event": "client_disconnect", "path": scope["path"]})
                return
            scope[BODY] = body
            await app(scope, _replay(body, receive), send)
        finally:
            guard.release(reserved[0])

    return middleware


async def _read(
    receive, guard: Guard, length: int | None, reserved: list[int]
) -> bytes | bytearray | JSONResponse | None:
    """The whole body (None: the client left), or the error answer: as it came if in one piece, else
    one buffer of the declared size, returned as it is (OPTIMIZATION: a body of hundreds of KB was
    copied a second time, out of the buffer; one allocation per body, not one per piece, gives its
    memory back whole when it is dropped)."""
    buf, n = None, 0
    deadline = asyncio.get_running_loop().time() + guard.http.body_timeout_s
    try:
        async with asyncio.timeout_at(deadline) as timeout:
            guard._reads.add(timeout)
            try:
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        return None
                    chunk, more = msg.get("body", b""), msg.get("more_body", False)
                    if length is None:  # chunked: counted as it comes
                        if n + len(chunk) > guard.max_body:
                            return error(413, "too_large", f"request body is over the limit of {guard.max_body} bytes")
                        grow = max(n + len(chunk) - reserved[0], 0)
                        if grow and not guard.reserve(grow):
                            return error(503, "in_flight_full", "too many request bodies in flight; retry shortly")
                        reserved[0] += grow
                    if buf is None and not more:
                        return chunk  # a body in one piece: as it came
                    if buf is None:
                        buf = bytearray(length or 0)  # one buffer of the declared size
                    buf[n : n + len(chunk)] = chunk  # the parser never passes more than Content-Length
                    n += len(chunk)
                    if not more:
                        break
            finally:
                guard._reads.discard(timeout)
    except TimeoutError:
        if guard.closing:
            return error(503, "shutting_down", "the server is shutting down; resend the request elsewhere")
        return error(
            408, "body_timeout",
            f"{n} bytes of the body arrived in {guard.http.body_timeout_s:g} s and it is not complete; send "
            "the whole body promptly",
        )  # fmt: skip
    del buf[n:]
    return buf


async def body_of(request) -> bytes | bytearray:
    """The request's body: as read whole here (no copy; bytes, or the buffer it was read into), else
    from the request."""
    body = request.scope.get(BODY)
    return body if body is not None else await request.body()


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the server says http.disconnect when the client leaves

    return replay


def _closing(send, guard: Guard):
    """Responses started while the server drains close their connections."""

    async def closing(message):
        if guard.draining and message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await send(message)

    return closing


async def until_disconnect(receive, work):
    """Await `work` (a coroutine) unless the client disconnects first: then `work` is cancelled (the
    engine drops its queued images) and ClientGone is raised. `receive` must have delivered the body."""

    async def watch():
        while (await receive())["type"] != "http.disconnect":
            pass

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler is cancelled
        for t in (task, watcher):
            if not t.done():
                t.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        raise ClientGone()
    return task.result()
