"""Connections under guard: uvicorn's HTTP protocol with limits it lacks, and a server that drains.

uvicorn closes an idle keep-alive connection (`keep_alive_s`) but waits forever for the first
request of a new connection, and, with httptools, for headers of any size. So each connection here
must deliver a request's headers within `header_timeout_s` (up to 20 % more, at random, to spread
the closing of connections opened together) of connecting or of starting them
(else 408 and closed, or closed quietly if nothing came) and in at most `max_header_kb` (431);
a request on a connection beyond `max_connections` is answered 503 `too_many_connections` and its
connection closed. An inference request (`POST .../infer`, `.../classify`) is stamped with the time
its first byte was read, and admitted by the front door (`admission.py`) when its headers are
complete, or answered 503 `overloaded` there: written without its body being parsed, the
connection kept open. A refusal written by the connection itself (bad framing, 501, 408, ...) closes it,
but only after the answers of the requests pipelined before it. A client's FIN is taken as the client gone
(its requests still queued are cancelled, `client_gone`): a server cannot tell a half-close from a close,
and an abandoned request must not cost device time. At shutdown (`GuardedServer`) the server first drains for
`drain_s` (readiness fails, responses say `Connection: close`, requests are still accepted), then closes the listener,
refuses bodies still arriving (`Guard.close`) and lets uvicorn finish what is in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import resource
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

import uvicorn

from otas.server.admission import OVERLOADED_MESSAGE, Ticket
from otas.server.errors import error_body
from otas.server.guard import ARRIVAL, SMALL, TICKET, Guard, error, in_flight_message
from otas.server.headers import byte_count

log = logging.getLogger("otas.server")


def _base() -> type[asyncio.Protocol]:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # uvicorn without httptools (it is in uvicorn[standard])
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def protocol_class(guard: Guard) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools, else h11) with the limits of the module docstring."""
    cfg = guard.http

    async def too_many(scope, receive, send):
        msg = f"this server holds {cfg.max_connections} connections at most and all are open; retry shortly"
        await error(503, "too_many_connections", msg)(scope, receive, send)

    async def overloaded(scope, receive, send):
        await send({"type": "http.response.start", "status": 503, "headers": OVERLOADED_HEAD})
        await send({"type": "http.response.body", "body": OVERLOADED_BODY})

    class GuardedProtocol(_base()):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _counted = False
        _skipping = _boundary = False
        """The body of a request answered `overloaded` is arriving (not headers: not counted as such)."""
        _head_open = False
        """A request's head has begun and not ended (httptools: between `on_message_begin` and
        `on_headers_complete`), so the bytes arriving are head bytes even while an earlier request
        on the connection runs (pipelined)."""
        _running = None
        """The cycle whose ASGI task runs (uvicorn's `cycle` is the newest request's: a pipelined one
        may be parsed while an earlier one runs)."""
        _pending: bytes | None = None
        """A refusal (`_refuse`) written once the requests before it on the connection are answered."""

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_open = True
            self.scope[ARRIVAL] = time.monotonic()

        def on_headers_complete(self) -> None:
            self._head_open = False
            if self._pending is not None or self.transport.is_closing():  # after a refusal in this piece
                return
            if (hosts := sum(k == b"host" for k, _ in self.headers)) != 1 and self.parser.get_http_version() == "1.1":
                msg = f"an HTTP/1.1 request carries exactly one Host header (RFC 9112 §3.2); this one has {hosts}"
                return self._refuse(400, "bad_host", msg)
            if coding := self._transfer_coding():
                msg = (f"Transfer-Encoding {coding!r} is not implemented here: the body would be read still encoded; "
                       "send it chunked or with a Content-Length, compressed content as the file itself")  # fmt: skip
                return self._refuse(501, "unsupported_transfer_coding", msg)
            if self._upgrade_with_body():
                msg = ("this server speaks HTTP/1.1 only, and the body of a request asking to upgrade is not read; "
                       "send it without the Upgrade and Connection: upgrade headers")  # fmt: skip
                return self._refuse(400, "upgrade_unsupported", msg)
            if len(getattr(self, "pipeline", ())) >= cfg.max_pipelined:  # (each queued request holds memory)
                msg = (f"more than {cfg.max_pipelined} requests were sent on this connection ahead of their answers; "
                       "read the answers before sending more, or open another connection")  # fmt: skip
                return self._refuse(503, "too_many_pipelined", msg)
            if (self.cycle is None or self.cycle.response_complete) and self._body_refused():
                return
            door = guard.door
            refused = self.app is too_many  # answered 503 whatever its place: it takes none (one never freed
            # by the app that refuses it would shut the door on every later request)
            if door is None or refused or self.parser.get_method() != b"POST" or not _inference(self.url):
                return super().on_headers_complete()
            if door.admit():
                self.scope[TICKET] = Ticket(door)
                return super().on_headers_complete()
            if (self.cycle is None or self.cycle.response_complete) and not guard.draining:
                return self._overloaded()
            app, self.app = self.app, overloaded  # behind a pipelined request, or draining: in turn
            try:
                super().on_headers_complete()
            finally:
                self.app = app

        def _body_refused(self) -> bool:
            """A body over the limit (413) or over what may be in flight (503 `in_flight_full`) is
            refused as its headers end, on the connection, which closes at once: the body middleware
            (`guard.py`) would refuse it too, but only after an ASGI task, while the client keeps
            sending and the kernel keeps copying what is then thrown away (an attacker reopening
            150 stalled 8 MiB uploads moved gigabytes a minute that way)."""
            length = next((byte_count(v) for k, v in self.headers if k == b"content-length"), None)
            if length is None or length <= SMALL:
                return False
            if length > guard.max_body:
                self._refuse(
                    413, "too_large", f"request body of {length} bytes is over the limit of {guard.max_body}; send less"
                )
            elif guard.inflight + length > cfg.max_inflight_bytes:
                self._refuse(503, "in_flight_full", in_flight_message(guard))
            else:
                return False
            return True

        def _transfer_coding(self) -> str:
            """The first transfer coding other than chunked (and identity) the request declares, or "": the
            parser decodes chunked framing only, so a body in gzip, deflate, ... would reach the handlers as
            its compressed bytes (RFC 9112 §6.1: a server answers 501 to a coding it does not understand)."""
            for k, v in self.headers:
                if k == b"transfer-encoding":
                    for c in v.decode("latin-1").split(","):
                        if (c := c.strip().lower()) not in ("", "chunked", "identity"):
                            return c[:40]
            return ""

        def _upgrade_with_body(self) -> bool:
            """An Upgrade request (h2c, websocket, ...) with a body: httptools stops parsing at its
            headers, so the body would be lost and the request answered as if it had none."""
            if not hasattr(self, "_get_upgrade") or self._get_upgrade() is None:
                return False
            return any(
                k == b"transfer-encoding" or k == b"content-length" and v.strip() not in (b"", b"0")
                for k, v in self.headers
            )

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            guard.connections += 1
            self._counted = True
            if guard.connections > cfg.max_connections:
                self.app = too_many
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self._counted:
                guard.connections -= 1
                self._counted = False
            running = self._running
            if running is not None and running is not self.cycle and not running.response_complete:
                running.disconnected = True  # its client is gone: it must not write, and may stop (client_gone)
                running.message_event.set()
            for cycle, _ in getattr(self, "pipeline", ()):  # queued behind it: they will never start
                ticket = cycle.scope.get(TICKET)
                if ticket is not None:
                    ticket.release()
                cycle.disconnected = True
            getattr(self, "pipeline", []).clear()
            super().connection_lost(exc)

        def _start_asgi_task(self, cycle, app) -> None:
            self._running = cycle
            ticket = cycle.scope.get(TICKET)
            if ticket is not None and not cycle.more_body:  # a pipelined request, whole, starts its turn now
                ticket.start()
            super()._start_asgi_task(cycle, app)

        def send_400_response(self, msg: str) -> None:
            """A request httptools cannot parse (bad framing, a bad method or header byte): the JSON
            error body every other error has, not uvicorn's plain text."""
            self._refuse(400, "bad_http", f"{msg.rstrip('.')}: the request is not valid HTTP/1.1 framing; fix it")

        def data_received(self, data: bytes) -> None:
            # a skipped body (`_overloaded`) may end in this piece, and the next head begin: not counted
            skipping, self._boundary = self._skipping, False
            if self.transport.is_closing() or self._pending is not None:  # refused: nothing more is read
                return
            # a head is due: on an idle connection, or one begun in an earlier piece behind a running request
            # (pipelined: counted and timed as any head, else a header value could grow without end)
            continuing = self._head_open
            if not skipping and (continuing or self.cycle is None or self.cycle.response_complete):
                end = data.find(b"\r\n\r\n")  # a head whole in one piece is parsed at once: count it first
                if self._head_bytes + (len(data) if end < 0 else end + 4) > cfg.max_header_kb * 1024:
                    msg = f"request line and headers are over {cfg.max_header_kb} KiB; send fewer or shorter"
                    return self._refuse(431, "headers_too_large", msg)
            super().data_received(data)
            if self.transport.is_closing():
                return self._disarm()
            if self._head_open and (continuing or self.cycle is not None and not self.cycle.response_complete):
                # a pipelined head still arriving; begun after a message that ended in this piece, it is counted
                # from the next piece (where it began is not known: at most one piece of it goes uncounted)
                began_inside = self._boundary or skipping
                self._head_bytes = 0 if began_inside else (self._head_bytes if continuing else 0) + len(data)
                return self._arm()
            if (
                skipping
                or self._skipping
                or self._boundary
                or self.cycle is not None
                and not self.cycle.response_complete
            ):
                self._head_bytes = 0
                return self._disarm()
            self._head_bytes += len(data)  # a head still arriving (its size was checked above)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self._head_open:  # (a pipelined head still arriving keeps its count)
                self._head_bytes = 0
            if self._pending is not None:
                if not self._busy():  # every earlier answer is out
                    self.transport.write(self._pending)
                    self.transport.close()
                else:
                    self.transport.pause_reading()  # (uvicorn resumed reading for the next pipelined request)

        def _busy(self) -> bool:
            """Whether a request on this connection is still to be answered (running or pipelined)."""
            running = self._running
            return running is not None and not running.response_complete or bool(getattr(self, "pipeline", ()))

        def _arm(self) -> None:
            if self._head_timer is None:  # from the head's start: a trickle does not extend it
                # up to 20 % later at random: connections opened together are not all closed in one loop turn
                delay = cfg.header_timeout_s * (1 + 0.2 * random.random())
                self._head_timer = self.loop.call_later(delay, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            pipelined = self._head_open and self._busy()  # a head behind requests still to be answered
            if pipelined and getattr(self.flow, "read_paused", False):  # not read while the requests before it
                return self._arm()  # wait: not the client's delay (it may have sent the rest); timed again from now
            if not pipelined and self.cycle is not None and not self.cycle.response_complete:
                return
            if pipelined or self._head_bytes or self._head_open:
                msg = f"request headers did not arrive whole within {cfg.header_timeout_s:g} s; send them promptly"
                return self._refuse(408, "header_timeout", msg)
            self.transport.close()  # nothing was asked: no answer

        def on_message_complete(self) -> None:
            self._skipping, self._boundary = False, True
            ticket = (getattr(self, "scope", None) or {}).get(TICKET)
            # the body is in: from now on the host works on it, unless it waits behind the answers of the requests
            # before it on its connection (pipelined: it starts with its turn, `_start_asgi_task`; a client that
            # reads none of those answers would otherwise hold its place for as long as it keeps the connection).
            # uvicorn queues a pipelined request at the left of `pipeline`, so this one, if queued, is first there
            pipeline = getattr(self, "pipeline", None)
            if ticket is not None and not (pipeline and pipeline[0][0] is self.cycle):
                ticket.start()
            super().on_message_complete()

        def _overloaded(self) -> None:
            """503 `overloaded` written at once, no ASGI task: under overload every refusal is CPU
            the admitted requests do not get (at 4x the capacity, refusing 3 requests must cost well
            under serving one). The body that follows is skipped, the connection kept."""
            # OPTIMIZATION: a canned response and an answered stand-in cycle, in place of uvicorn's
            keep = self.parser.should_keep_alive()
            self.transport.write(OVERLOADED_RESPONSE if keep else OVERLOADED_CLOSE)
            self.cycle, self._skipping = _Answered(), True
            self.on_response_complete()
            if not keep:
                self.transport.close()

        def _refuse(self, status: int, reason: str, message: str) -> None:
            """An answer written straight to the socket (no request was parsed), then close; behind
            pipelined requests still running, once they are answered (`_pending`)."""
            body = json.dumps(error_body(message, reason)).encode()
            phrase = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
                      431: "Request Header Fields Too Large", 501: "Not Implemented",
                      503: "Service Unavailable"}[status]  # fmt: skip
            head = (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                    "connection: close\r\n\r\n")  # fmt: skip
            self._disarm()
            # a request whose own body is what is refused (bad chunk framing) cannot be answered first
            whole = self.cycle is None or not self.cycle.more_body
            self.cycle = _Answered()  # what the parser still reads of this piece (a body) is skipped
            if whole and self._busy():  # answers go in request order: this one after those of the requests before
                self._pending = head.encode() + body
                self.transport.pause_reading()
                return
            self.transport.write(head.encode() + body)
            self.transport.close()

    return GuardedProtocol


def _inference(url: bytes) -> bool:
    """Whether a request's target routes to an inference handler: judged on the decoded path, as
    the router decodes it (`/v2/models/m/inf%65r` is `/infer`: it must not pass the door uncounted)."""
    path = url.split(b"?", 1)[0].split(b"#", 1)[0]  # (the router reads the path as httptools parses it)
    if b"%" in path:
        path = unquote_to_bytes(path)
    return path.rstrip(b"/").endswith((b"/infer", b"/classify"))


OVERLOADED_BODY = json.dumps(error_body(OVERLOADED_MESSAGE, "overloaded")).encode()
OVERLOADED_HEAD = [
    (b"content-type", b"application/json"), (b"content-length", str(len(OVERLOADED_BODY)).encode()),
    (b"retry-after", b"1"),
]  # fmt: skip


def _response(close: bool) -> bytes:
    head = b"".join(b"%s: %s\r\n" % kv for kv in OVERLOADED_HEAD)
    return b"HTTP/1.1 503 Service Unavailable\r\n" + head + (b"connection: close\r\n" if close else b"") + b"\r\n"


OVERLOADED_RESPONSE = _response(False) + OVERLOADED_BODY
OVERLOADED_CLOSE = _response(True) + OVERLOADED_BODY


class _Answered:
    """The cycle of a request answered by the protocol itself: its body is skipped."""

    response_complete, disconnected, keep_alive, more_body, body = True, False, True, False, b""

    class message_event:  # noqa: N801 - uvicorn sets it on disconnect
        @staticmethod
        def set() -> None:
            pass


class GuardedServer(uvicorn.Server):
    """A uvicorn server that drains before it closes (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, guard: Guard, on_started: Callable[[int], None] | None = None):
        super().__init__(config)
        self.guard = guard
        self.on_started = on_started

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.on_started is not None and self.servers and not self.should_exit:
            self.on_started(self.servers[0].sockets[0].getsockname()[1])

    async def shutdown(self, sockets=None) -> None:
        self.guard.drain()
        drain_s = self.guard.http.drain_s
        log.info("draining", extra={"event": "drain", "drain_s": drain_s, "connections": self.guard.connections})
        loop = asyncio.get_running_loop()
        end = loop.time() + drain_s
        while loop.time() < end and not self.force_exit:
            await asyncio.sleep(min(0.05, end - loop.time()))
        self.guard.close()
        await super().shutdown(sockets)


def make_server(
    app, host: str = "127.0.0.1", port: int = 0, on_started: Callable[[int], None] | None = None, **kwargs: Any
) -> GuardedServer:
    """A uvicorn server for an app of `create_app`, with its guard's limits; `on_started(port)` once it
    listens, with the port bound."""
    guard: Guard = app.state.guard
    cfg = guard.http
    raise_fd_limit(cfg.max_connections + 1024)
    kwargs.setdefault("log_config", None)
    config = uvicorn.Config(  # ws="none": no WebSocket endpoint, so an Upgrade is never handed off
        app, host=host, port=port, lifespan="on", access_log=False, http=protocol_class(guard), ws="none",
        timeout_keep_alive=cfg.keep_alive_s, **kwargs,
        # h11's own limit (a plain-text 400) above ours (a JSON 431), even for a whole read of 256 KiB
        h11_max_incomplete_event_size=2 * cfg.max_header_kb * 1024 + (256 << 10),
    )  # fmt: skip
    return GuardedServer(config, guard, on_started)


def raise_fd_limit(want: int) -> int:
    """Raise this process's open-file limit towards `want` (within the hard limit): every connection
    is a file descriptor, and running out of them stops the server accepting anyone."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
