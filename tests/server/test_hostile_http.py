"""HTTP-level hostility: pipelined requests left behind by a client that hangs up release their
front-door places (else a few dozen cheap connections shut inference for good), WebSocket upgrades
neither leak the connection count nor get handed off, a running request whose client left never
writes (no ERROR), malformed framing gets the JSON error body, and the application API refuses bad
types and sizes with 400."""

from __future__ import annotations

import json
import logging
import socket
import struct
import time

import httpx
import pytest

from otas.server.guard import Guard
from tests.server.helpers import PacedRunner, infer_body, paced_profile, png, serving

INFER = "/v2/models/tiny_test/infer"


@pytest.fixture(scope="module")
def srv(runner):
    prof = paced_profile(5, 1)
    with serving(PacedRunner(runner, prof), prof) as (s, _):
        yield s


def guard_of(srv) -> Guard:
    return srv.app.state.guard


def settle(pred, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def sock(url: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    s.settimeout(10)
    return s


def post(path: str, ctype: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def infer_request(seed: int = 0) -> bytes:
    return post(INFER, "application/json", json.dumps(infer_body("novel")).encode())


def classify_request(seed: int = 0) -> bytes:
    return post("/v1/apps/novel/classify", "image/png", png(seed))


def hang_up(s: socket.socket, reset: bool) -> None:
    if reset:  # RST instead of FIN
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


@pytest.mark.parametrize("make", [infer_request, classify_request], ids=["infer", "classify"])
@pytest.mark.parametrize("pipelined,reset", [(2, False), (2, True), (3, False), (5, True)])
def test_pipelined_requests_of_a_client_that_hung_up_release_their_places(srv, make, pipelined, reset, caplog):
    door = guard_of(srv).door
    assert door is not None
    for i in range(12):
        s = sock(srv.url)
        s.sendall(b"".join(make(i * 10 + j) for j in range(pipelined)))
        time.sleep(0.002 * (i % 3))  # hang up before, during or after the first answer
        hang_up(s, reset)
    assert settle(lambda: door.in_flight == 0), door.in_flight  # every place back
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        codes = [c.post(INFER, json=infer_body("novel")).status_code for _ in range(8)]
    assert codes == [200] * 8
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]  # a client that left is not a server error


@pytest.mark.parametrize("n", [5, 40])
def test_websocket_upgrades_are_served_as_http_and_free_their_connection(srv, n):
    g = guard_of(srv)
    base = g.connections
    head = (b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")  # fmt: skip
    statuses = []
    for _ in range(n):
        s = sock(srv.url)
        s.sendall(head)
        statuses.append(int(s.recv(4096).split()[1]))
        s.close()
    assert set(statuses) == {200}  # no WebSocket endpoint: an ordinary answer, never a 101
    # at most as many as before: a connection of an earlier test may still have been closing then
    assert settle(lambda: g.connections <= base), (g.connections, base)


BAD_FRAMING = [
    b"POST /v2/health/ready HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
    b"POST /v2/health/ready HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v2/health/ready HTTP/1.1\r\nhost: x\r\ncontent-length: -5\r\n\r\n",
    b"POST /v2/health/ready HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"get /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\nx-a: b\x00c\r\n\r\n",
    b"GET /v2/he alth HTTP/1.1\r\nhost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on the plain port
]


@pytest.mark.parametrize("raw", BAD_FRAMING, ids=range(len(BAD_FRAMING)))
def test_malformed_framing_gets_the_json_error_body(srv, raw):
    s = sock(srv.url)
    s.sendall(raw)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split()[1] == b"400", data[:200]
    assert b"application/json" in head.lower()
    assert json.loads(body)["reason"] == "bad_http"


@pytest.mark.parametrize("ctype", ["IMAGE/PNG", "Image/Png", "Application/Octet-Stream"])
def test_media_types_are_case_insensitive(srv, ctype):
    r = httpx.post(srv.url + "/v1/apps/novel/classify", content=png(1), headers={"content-type": ctype}, timeout=30)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("enc", ["gzip", "deflate", "br", "GZIP"])
def test_compressed_classify_bodies_are_415(srv, enc):
    r = httpx.post(srv.url + "/v1/apps/novel/classify", content=png(1),
                   headers={"content-type": "image/png", "content-encoding": enc}, timeout=30)  # fmt: skip
    assert r.status_code == 415 and r.json()["reason"] == "unsupported_encoding"


@pytest.mark.parametrize("encodings", [["identity", "gzip"], ["gzip", "identity"], ["identity, br"], ["identity", ""]])
def test_every_content_encoding_header_counts(srv, encodings):
    """Two Content-Encoding headers (or a list in one): a body compressed by any of them is 415, not
    read as plain because the first said identity."""
    raw = "".join(f"content-encoding: {e}\r\n" for e in encodings)
    s = sock(srv.url)
    s.sendall(post("/v1/apps/novel/classify", "image/png", png(1), raw))
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        if not (chunk := s.recv(65536)):
            break
        data += chunk
    s.close()
    plain = all(e in ("identity", "") for e in encodings)
    assert data.split()[1] == (b"200" if plain else b"415"), data[:300]


UPGRADES = [
    "upgrade: h2c\r\nconnection: Upgrade, HTTP2-Settings\r\nhttp2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n",
    "upgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    "upgrade: anything/1\r\nconnection: keep-alive, UPGRADE\r\n",
]


@pytest.mark.parametrize("extra", UPGRADES, ids=["h2c", "websocket", "other"])
@pytest.mark.parametrize("make", ["infer", "classify"])
def test_an_upgrade_with_a_body_is_refused_not_answered_without_it(srv, extra, make):
    body, (path, ctype) = (
        (json.dumps(infer_body("novel")).encode(), (INFER, "application/json"))
        if make == "infer"
        else (png(3), ("/v1/apps/novel/classify", "image/png"))
    )
    s = sock(srv.url)
    s.sendall(post(path, ctype, body, extra))
    head, _, rest = s.recv(65536).partition(b"\r\n\r\n")
    s.close()
    assert head.split()[1] == b"400" and json.loads(rest)["reason"] == "upgrade_unsupported"
    # an Upgrade header alone (no Connection: upgrade) is no upgrade: served as usual
    s = sock(srv.url)
    s.sendall(post(path, ctype, body, "upgrade: h2c\r\n"))
    assert s.recv(65536).split()[1] == b"200"
    s.close()


def chunked(body: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(body[i : i + 1000]), body[i : i + 1000]) for i in range(0, len(body), 1000))


@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate, chunked", "x-custom ,chunked", "br,CHUNKED"])
@pytest.mark.parametrize("make", ["infer", "classify"])
def test_a_transfer_coding_other_than_chunked_is_501(srv, coding, make):
    """The parser decodes chunked framing only: a body in another transfer coding would reach the
    handlers still encoded (and be a bad_json or not_an_image at best). Chunked alone is served."""
    body, (path, ctype) = (
        (json.dumps(infer_body("novel")).encode(), (INFER, "application/json"))
        if make == "infer"
        else (png(3), ("/v1/apps/novel/classify", "image/png"))
    )
    for te, status in ((coding, b"501"), ("chunked", b"200"), ("identity, chunked", b"200")):
        s = sock(srv.url)
        s.sendall(
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {ctype}\r\ntransfer-encoding: {te}\r\n\r\n".encode()
            + chunked(body) + b"0\r\n\r\n"
        )  # fmt: skip
        head, _, rest = s.recv(65536).partition(b"\r\n\r\n")
        s.close()
        assert head.split()[1] == status, (te, head, rest[:200])
        if status == b"501":
            assert (
                json.loads(rest)["reason"] == "unsupported_transfer_coding"
                and coding.split(",")[0].strip().lower() in json.loads(rest)["error"]
            )


@pytest.mark.parametrize("kb", [33, 60, 100, 200])
def test_a_long_query_string_counts_in_the_header_limit(srv, kb):
    """The request line's query string counts in `max_header_kb` (32 KiB here) like the headers,
    sent in one piece or in several: a JSON 431, never a 200 or a reset."""
    for pieces in (1, 4):
        s = sock(srv.url)
        head = f"GET /v2/health/live?{'a' * (kb << 10)} HTTP/1.1\r\nhost: x\r\n\r\n".encode()
        step = -(-len(head) // pieces)
        try:
            for i in range(0, len(head), step):
                s.sendall(head[i : i + step])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the rest was read: the answer is still there to read
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and b"}" in data:
                break
        s.close()
        assert data.startswith(b"HTTP/1.1 431 "), data[:200]
        assert b'"reason":"headers_too_large"' in data.replace(b" ", b"")


@pytest.mark.parametrize("field", ["parameters", "datatype", "name", "shape", "app_path"])
def test_an_error_quoting_a_huge_client_value_is_cut_short(srv, field):
    """An error message that quotes the client's value does not send it back whole: a 40 KB field is
    not a 40 KB error body (an amplifier for anyone who sends junk). The start, naming the value, and
    the end, naming the fix, stay."""
    huge = "x" * 40_000  # (this server's body limit is 64 KiB)
    body = infer_body("novel")
    path = INFER
    if field == "parameters":
        body["parameters"] = huge
    elif field == "shape":
        body["inputs"][0]["shape"] = [1] * 8192
    elif field == "app_path":
        path = f"/v1/apps/{'a' * 20000}/classify"
    else:
        body["inputs"][0][field] = huge
    r = httpx.post(srv.url + path, content=json.dumps(body), headers={"content-type": "application/json"}, timeout=30)
    assert 400 <= r.status_code < 500
    err = r.json()
    assert len(r.content) < 2048 and err["reason"] and "characters cut" in err["error"]


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset ends it too)."""
    out = b""
    while True:
        try:
            got = s.recv(65536)
        except ConnectionResetError:
            return out
        if not got:
            return out
        out += got


def statuses(data: bytes) -> list[int]:
    """The status of each HTTP response in `data`, in order (bodies skipped by content-length)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        out.append(int(head.split()[1]))
        n = next(int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")[1:])
                 if k.strip().lower() == b"content-length")  # fmt: skip
        data = rest[n:]
    return out


REFUSED_NEXT = {
    "garbage": (b"GARBAGE\r\n\r\n", 400),
    "gzip": (b"POST /v2/health/ready HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    "upgrade": (post("/v2/health/ready", "text/plain", b"abc", "upgrade: h2c\r\nconnection: upgrade\r\n"), 400),
}


@pytest.mark.parametrize("bad", list(REFUSED_NEXT))
@pytest.mark.parametrize("before", [1, 3])
@pytest.mark.parametrize("make", [infer_request, classify_request], ids=["infer", "classify"])
def test_a_refused_pipelined_request_is_answered_after_the_valid_ones_before_it(srv, bad, before, make):
    """Valid requests, then one the connection refuses (unparseable, a transfer coding it cannot read,
    an upgrade with a body), in one write: each valid one gets its answer, in order, and the refusal
    comes last before the close (it was written at once, and the answers before it were lost while a
    pipelining client read the refusal as the answer to its first request)."""
    payload, status = REFUSED_NEXT[bad]
    s = sock(srv.url)
    s.sendall(b"".join(make(i) for i in range(before)) + payload)
    got = statuses(read_all(s))
    s.close()
    assert got == [200] * before + [status]


@pytest.mark.parametrize("hosts", [0, 2, 3])
@pytest.mark.parametrize("path", ["/v2/health/ready", INFER])
def test_an_http11_request_without_exactly_one_host_is_400(srv, hosts, path):
    """RFC 9112 §3.2: a server answers 400 to an HTTP/1.1 request with no Host header or several. One
    Host, or HTTP/1.0 without one, is served."""
    body = json.dumps(infer_body("novel")).encode() if path == INFER else b""
    method = "POST" if body else "GET"

    def ask(version: str, n: int) -> bytes:
        head = f"{method} {path} HTTP/{version}\r\n" + "host: x\r\n" * n
        s = sock(srv.url)
        s.sendall(f"{head}content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
        got = read_all(s)
        s.close()
        return got

    bad = ask("1.1", hosts)
    assert statuses(bad) == [400] and json.loads(bad.partition(b"\r\n\r\n")[2])["reason"] == "bad_host"
    assert statuses(ask("1.1", 1))[0] == 200
    if hosts == 0:
        assert statuses(ask("1.0", 0))[0] == 200
