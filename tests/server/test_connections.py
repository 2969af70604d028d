"""Connection and memory exhaustion: idle and half-header connections are closed after the header
timeout, headers are capped, connections beyond the cap are answered 503 at once, request bodies in
flight are capped (503 at once beyond; slow bodies 408 after the body timeout), ordinary requests get
through all the while, and memory goes back once large bodies are gone."""

import contextlib
import dataclasses
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from otas.config import HttpConfig
from tests.server.helpers import APPS, PacedRunner, infer_body, paced_profile, rss_mb, server_process, serving

INFER = "/v2/models/tiny_test/infer"
HEAD = f"POST {INFER} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"


@pytest.fixture(params=["httptools", "h11"])
def impl(request, monkeypatch):
    """A test on both of uvicorn's HTTP implementations (httptools is used when installed)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from otas.server import connections

    base = {"httptools": HttpToolsProtocol, "h11": H11Protocol}[request.param]
    monkeypatch.setattr(connections, "_base", lambda: base)
    return request.param


def server(runner, **http):
    prof = paced_profile(5, 1)
    cfg = HttpConfig(**{"drain_s": 0.0, "max_body_mb": 1.0, "max_inflight_mb": 1.0, **http})
    return serving(PacedRunner(runner, prof), prof, http=cfg, max_body=1 << 20)


def connect(url: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    s.settimeout(20)
    return s


def answer(s: socket.socket) -> tuple[int | None, dict | None]:
    """Read until the server closes: (status, JSON body) of the first response, or (None, None) if it
    closed silently."""
    got = answers(s)
    return got[0] if got else (None, None)


def ok(url: str) -> bool:
    return httpx.post(url + INFER, json=infer_body("blur"), timeout=30).status_code == 200


def test_idle_and_half_header_connections_are_closed(runner, impl):
    rng = np.random.default_rng(0)
    full = (HEAD + "content-length: 10\r\n\r\n").encode()
    with server(runner, header_timeout_s=0.5) as (srv, _):
        idle = [connect(srv.url) for _ in range(30)]
        half = []
        for _ in range(30):
            s = connect(srv.url)
            s.sendall(full[: int(rng.integers(1, len(full) - 2))])
            half.append(s)
        trickle = connect(srv.url)  # a header trickle does not extend the timeout
        stop = threading.Event()

        def drip():
            for b in full[:-3]:
                if stop.wait(0.05):
                    return
                try:
                    trickle.send(bytes([b]))
                except OSError:
                    return

        t = threading.Thread(target=drip)
        t.start()
        assert ok(srv.url)  # served while they hang
        assert all(answer(s) == (None, None) for s in idle)  # nothing asked: closed without an answer
        for s in half:
            status, body = answer(s)
            assert status == 408 and body["reason"] == "header_timeout", body
        assert answer(trickle)[0] == 408
        stop.set()
        t.join()
        assert ok(srv.url) and srv.app.state.guard.connections <= 1


@pytest.mark.parametrize("kb", [5, 64, 1024])
def test_headers_over_the_limit_are_431(runner, impl, kb):
    with server(runner, max_header_kb=4) as (srv, _):
        s = connect(srv.url)
        try:
            s.sendall(HEAD.encode() + b"x-pad: " + b"a" * (kb << 10) + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still sending: refused either way
        status, body = answer(s)
        assert status in (431, None) and (body is None or body["reason"] == "headers_too_large")
        assert ok(srv.url)


def test_connections_over_the_cap_are_503_at_once(runner, impl):
    with server(runner, max_connections=20, header_timeout_s=30) as (srv, _):
        held = [connect(srv.url) for _ in range(20)]
        for _ in range(3):
            r = httpx.post(srv.url + INFER, json=infer_body("blur"), timeout=30)
            assert r.status_code == 503 and r.json()["reason"] == "too_many_connections", r.text
            assert r.headers["connection"] == "close" and r.headers["retry-after"] == "1"
        # a refused request holds no place in the front door: leaked places once shut it on everyone
        door = srv.app.state.guard.door
        assert door is not None and door.in_flight == 0 and door.admitted == 0
        for s in held:
            s.close()
        deadline = time.monotonic() + 10
        while srv.app.state.guard.connections > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ok(srv.url)
        assert door.in_flight == 0


@pytest.mark.parametrize("chunked", [False, True])
def test_bodies_in_flight_are_capped_and_slow_bodies_time_out(runner, impl, chunked):
    with server(runner, body_timeout_s=1.0) as (srv, _):
        stalled = connect(srv.url)
        if chunked:  # no declared size: counted as it arrives
            stalled.sendall(HEAD.encode() + b"transfer-encoding: chunked\r\n\r\n")
            for _ in range(12):
                stalled.sendall(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
        else:
            stalled.sendall((HEAD + "content-length: 900000\r\n\r\n").encode() + b"x" * 800_000)
        time.sleep(0.2)  # let the server take it in (a liveness margin, not a measurement)
        second = connect(srv.url)
        second.sendall((HEAD + "content-length: 900000\r\n\r\n").encode())
        status, body = answer(second)
        assert status == 503 and body["reason"] == "in_flight_full", body
        assert ok(srv.url)  # small bodies are not held back
        status, body = answer(stalled)
        assert status == 408 and body["reason"] == "body_timeout", body
        assert srv.app.state.guard.inflight == 0
        r = httpx.post(srv.url + INFER, content=b"[" + b" " * 900_000 + b"]", timeout=30,
                       headers={"content-type": "application/json"})  # fmt: skip
        assert r.status_code == 400  # room again: read, and answered on its merits


@pytest.mark.parametrize("size", [900_000, 5_000_000])
def test_a_refused_body_is_answered_as_its_headers_end(runner, impl, size, caplog):
    """Over the in-flight budget (503) or the body limit (413), with the body's first bytes in the same
    piece as the headers: answered at once, and the bytes that follow are not parsed as a request."""
    with server(runner, body_timeout_s=2.0) as (srv, _):
        stalled = connect(srv.url)
        stalled.sendall((HEAD + "content-length: 900000\r\n\r\n").encode() + b"x" * 800_000)
        time.sleep(0.2)  # let the server take it in (a liveness margin, not a measurement)
        for _ in range(3):
            refused = connect(srv.url)
            refused.sendall((HEAD + f"content-length: {size}\r\n\r\n").encode() + b"x" * 200_000)
            status, body = answer(refused)
            want = ("in_flight_full", 503) if size <= 1 << 20 else ("too_large", 413)
            assert (body["reason"], status) == want, body
        assert ok(srv.url)
        stalled.close()
    assert not [r for r in caplog.records if "Invalid HTTP request" in r.getMessage()]


def test_memory_returns_after_large_bodies(tiny_ckpt):
    """Rounds of 40 bodies of 2 MiB held at once, then dropped: the server's memory goes back."""
    # front door off: 40 requests held at once are more than it would admit (they would not be held)
    http = {"max_body_mb": 2.0, "max_inflight_mb": 96.0, "body_timeout_s": 60.0, "drain_s": 0.0, "front_budget": 0.0}
    with server_process(tiny_ckpt, 5, 1, http) as (url, proc):
        for _ in range(5):
            assert ok(url)
        base = rss_mb(proc.pid)
        size = 2 << 20
        for _ in range(3):
            socks = []
            for _ in range(40):
                s = connect(url)
                s.sendall((HEAD + f"content-length: {size}\r\n\r\n").encode() + b" " * (size - 1))
                socks.append(s)
            deadline = time.monotonic() + 30
            while rss_mb(proc.pid) < base + 40 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert rss_mb(proc.pid) >= base + 40  # the bodies were held
            for s in socks:
                s.close()
            deadline = time.monotonic() + 15
            while rss_mb(proc.pid) > base + 16 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert rss_mb(proc.pid) <= base + 16, (base, rss_mb(proc.pid))
        assert ok(url)


@pytest.mark.parametrize("size", [70_000, 200_000])
def test_chunked_body_over_the_limit_is_413_even_in_one_piece(runner, impl, size):
    prof = paced_profile(5, 1)
    with serving(PacedRunner(runner, prof), prof, http=HttpConfig(drain_s=0.0), max_body=64 << 10) as (srv, _):
        s = connect(srv.url)
        s.sendall(HEAD.encode() + b"transfer-encoding: chunked\r\n\r\n" + f"{size:x}\r\n".encode() + b"x" * size
                  + b"\r\n0\r\n\r\n")  # fmt: skip
        status, body = answer(s)
        assert status == 413 and body["reason"] == "too_large", body
        assert srv.app.state.guard.inflight == 0


def test_pipelined_requests_behind_unread_answers_hold_no_place(runner, impl):
    """A client that pipelines inference requests behind answers it never reads: they wait for their
    turn, which is not host work, so they take no place in the front door until it comes (they once
    held theirs for as long as the connection stayed open, and with the door's measured limit that
    refused every other client 503 `overloaded`)."""
    with server(runner, header_timeout_s=30, max_pipelined=1024) as (srv, _):
        body = json.dumps(infer_body("blur")).encode()
        infer = HEAD.encode() + b"content-length: %d\r\n\r\n" % len(body) + body
        s = connect(srv.url)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # ~1,000 answers of /metrics fill the socket's buffers, then the inference requests wait behind them
        s.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n" * 1000 + infer * 20)
        door = srv.app.state.guard.door
        time.sleep(2)
        assert door is not None and door.in_flight == 0
        assert ok(srv.url) and door.in_flight == 0
        s.close()
        deadline = time.monotonic() + 10
        while srv.app.state.guard.connections > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ok(srv.url) and door.in_flight == 0


def answers(s: socket.socket) -> list[tuple[int, dict]]:
    """Every response on a connection, in order, until the server closes it: (status, JSON body)."""
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    s.close()
    out = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        length = int(
            next(v for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n")) if k.lower() == b"content-length")
        )
        out.append((int(head.split()[1]), json.loads(data[:length]) if length else {}))
        data = data[length:]
    return out


@contextlib.contextmanager
def slow_server(runner, **http):
    """A server whose batches take a second (applications with SLOs of tens of seconds): a request on it
    runs while the client sends what follows it on the connection."""
    prof = paced_profile(1000, 1)
    apps = [dataclasses.replace(a, slo_ms=20 * a.slo_ms) for a in APPS]
    cfg = HttpConfig(**{"drain_s": 0.0, **http})
    with serving(PacedRunner(runner, prof), prof, apps=apps, http=cfg) as (srv, engine):
        yield srv, engine


def slow_infer() -> bytes:
    body = json.dumps(infer_body("blur")).encode()
    return HEAD.encode() + b"content-length: %d\r\n\r\n" % len(body) + body


def test_a_pipelined_head_is_capped_and_timed_while_the_request_before_it_runs(runner):
    """(httptools; h11 reads nothing more while a request runs.) The head of a request pipelined behind one
    still running counts against the header limit and the header time as any head does: it once went
    uncounted until the answer before it was out, and httptools grew one header value by 56 MB, re-copying
    it for each piece read, while other clients waited on the event loop."""
    with slow_server(runner, max_header_kb=4, header_timeout_s=0.5) as (srv, _):
        s = connect(srv.url)
        s.sendall(slow_infer() + b"GET /v2 HTTP/1.1\r\nhost: x\r\nx-a: ")
        sent = 0
        with contextlib.suppress(OSError):  # the server stops reading the head once it is over the limit
            s.settimeout(2)
            while sent < 64 << 20:
                s.sendall(b"a" * (16 << 10))
                sent += 16 << 10
        assert sent < 8 << 20  # it took no more than the limit and what the socket buffers hold
        s.settimeout(20)
        (status, _), (refused, body) = answers(s)
        assert status == 200 and refused == 431 and body["reason"] == "headers_too_large", body

        s = connect(srv.url)  # a pipelined head that stops short: 408 once its time is up, after the answer before
        s.sendall(slow_infer() + b"GET /v2 HTTP/1.1\r\nhost: x\r\n")
        (status, _), (refused, body) = answers(s)
        assert status == 200 and refused == 408 and body["reason"] == "header_timeout", body
        assert ok(srv.url)


def test_requests_pipelined_beyond_the_limit_are_refused_after_the_answers_before_them(runner):
    """(httptools.) At most `max_pipelined` requests queue behind the one running; the next is answered 503
    `too_many_pipelined` in its turn and the connection closed. Two clients once sent 41 MB of pipelined
    health checks without reading: the server queued every one (2.2 GB) and took 4.7 s to answer another."""
    with slow_server(runner, max_pipelined=4) as (srv, _):
        s = connect(srv.url)
        s.sendall(slow_infer() + b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n" * 2000)
        got = answers(s)
        assert [status for status, _ in got] == [200] * 5 + [503], got
        assert got[-1][1]["reason"] == "too_many_pipelined"
        assert ok(srv.url)


def test_a_pipelined_head_the_server_has_not_read_yet_is_not_timed_out(runner):
    """(httptools.) Behind a queued request the server stops reading; a head split across pieces there is
    not late however long the requests before it take (it once got 408 when they took past the header time)."""
    with slow_server(runner, header_timeout_s=0.5) as (srv, _):
        s = connect(srv.url)
        health = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n"
        s.sendall(slow_infer())
        time.sleep(0.1)
        s.sendall(health + health[:10])  # the second health check's head cut short: the rest comes at once
        time.sleep(0.05)
        s.sendall(health[10:] + health.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))
        assert [status for status, _ in answers(s)] == [200, 200, 200, 200]
