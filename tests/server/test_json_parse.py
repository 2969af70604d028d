"""JSON is never parsed at length on the event loop: a body with more values than any valid request
is refused before parsing (413 too_many_values), a large body is parsed in the parser process (the
server's own json.loads never sees it), the parser's queue is bounded (429 parse_busy), and errors
cross the process boundary intact."""

import asyncio
import json
import os
import time

import httpx
import numpy as np
import pytest

from otas.server import http_codec
from otas.server.errors import ProtocolError
from otas.server.parsing import INLINE, JsonParser
from otas.server.protocol import MAX_IMAGES
from tests.server.helpers import SIZE, PacedRunner, paced_profile, serving

INFER = "/v2/models/tiny_test/infer"
MOST = MAX_IMAGES * SIZE * SIZE * 3 + 4096


def pid_of(body: bytes) -> int:
    return os.getpid()


def slow(body: bytes) -> int:
    time.sleep(float(body[:4]))
    return len(body)


def refuse(body: bytes) -> None:
    raise ProtocolError(400, "bad_json", "refused in the child")


def test_parser_runs_large_bodies_in_a_child_and_bounds_its_queue():
    async def main():
        p = JsonParser(1, max_pending=1)
        small, large = b"x" * INLINE, b"x" * (INLINE + 1)
        assert await p.run(pid_of, small) == os.getpid()
        assert await p.run(pid_of, large) != os.getpid()
        with pytest.raises(ProtocolError) as e:
            await p.run(refuse, large)
        assert (e.value.status, e.value.reason, e.value.message) == (400, "bad_json", "refused in the child")
        busy = asyncio.ensure_future(p.run(slow, b"0.50" + large))
        await asyncio.sleep(0.05)
        with pytest.raises(ProtocolError) as e:
            await p.run(slow, b"0.00" + large)
        assert e.value.status == 429 and e.value.reason == "parse_busy" and "binary" in e.value.message
        assert await busy == INLINE + 5
        assert await p.run(slow, b"0.00" + large) == INLINE + 5  # room again
        p.shutdown()
        inline = JsonParser(0)
        assert await inline.run(pid_of, large) == os.getpid()

    asyncio.run(main())


@pytest.fixture(scope="module")
def srv(runner):
    prof = paced_profile(5, 1)
    with serving(PacedRunner(runner, prof), prof, max_body=8 << 20) as (s, _):
        yield s


def numbers(n: int, fmt: str) -> bytes:
    head = {
        "parameters": {"app": "novel"},
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, SIZE, SIZE, 3]}],
    }
    text = json.dumps(head)[:-3] + ', "data": ['
    return text.encode() + ",".join([fmt] * n).encode() + b"]}]}"


@pytest.mark.parametrize("n,fmt", [(MOST + 1, "0"), (MOST + 1, "255"), (2 * MOST, "1.5"), (3 * MOST, "[]")])
def test_more_values_than_any_request_is_refused_unparsed(srv, monkeypatch, n, fmt):
    seen, sent = [], []
    monkeypatch.setattr(http_codec, "loads", lambda raw: seen.append(len(raw)) or json.loads(bytes(raw)))
    run = JsonParser.run
    monkeypatch.setattr(
        JsonParser, "run", lambda self, fn, body, *a, **k: sent.append(len(body)) or run(self, fn, body, *a, **k)
    )
    r = httpx.post(srv.url + INFER, content=numbers(n, fmt), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["reason"] == "too_many_values" and "binary" in r.json()["error"]
    assert seen == [] and sent == []  # refused before the body could travel to the parser process


@pytest.mark.parametrize("header", ["999999999999999999", "0", "-5", "abc", "12x"])
def test_a_header_length_the_body_cannot_hold_is_refused_unparsed(srv, monkeypatch, header):
    """An Inference-Header-Content-Length that is not a byte count within the body is refused on the event loop:
    a large body with it never travels to the parser process (it once did, and four at once held the parser)."""
    sent = []
    run = JsonParser.run
    monkeypatch.setattr(
        JsonParser, "run", lambda self, fn, body, *a, **k: sent.append(len(body)) or run(self, fn, body, *a, **k)
    )
    body = numbers(MOST - 10, "7")  # a body the parser process would take
    headers = {"content-type": "application/octet-stream", "Inference-Header-Content-Length": header}
    r = httpx.post(srv.url + INFER, content=body, headers=headers, timeout=60)
    assert r.status_code == 400 and r.json()["reason"] == "bad_header_length", r.text
    assert sent == []


@pytest.mark.parametrize("n", [INLINE // 2, MOST - 10])
def test_large_json_is_parsed_off_the_event_loop(srv, monkeypatch, n):
    seen = []
    monkeypatch.setattr(http_codec, "loads", lambda raw: seen.append(len(raw)) or json.loads(bytes(raw)))
    body = numbers(n, "7")
    r = httpx.post(srv.url + INFER, content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400 and r.json()["reason"] == "bad_shape"  # the length check, after parsing
    assert seen == ([len(body)] if len(body) <= INLINE else [])  # large: parsed in the child, not here


@pytest.mark.parametrize("binary", [False, True])
def test_values_are_counted_once(srv, monkeypatch, binary):
    """The handler counts a body's JSON values before the parser hand-off; the parser does not count
    them again (in place here: a small body)."""
    from otas.server import http_infer

    counted = []
    check = http_codec.check_values

    def counting(raw, size):
        counted.append(len(raw))
        return check(raw, size)

    monkeypatch.setattr(http_codec, "check_values", counting)
    monkeypatch.setattr(http_infer, "check_values", counting)
    body, headers = numbers(SIZE * SIZE * 3, "7"), {"content-type": "application/json"}
    if binary:  # the same JSON as the header of a binary body, with no binary inputs: only it is counted
        headers = {"Inference-Header-Content-Length": str(len(body))}
    r = httpx.post(srv.url + INFER, content=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    assert counted == [len(body)]


def test_binary_tensors_need_no_json_parse(srv, monkeypatch):
    seen = []
    monkeypatch.setattr(http_codec, "loads", lambda raw: seen.append(len(raw)) or json.loads(bytes(raw)))
    img = np.random.default_rng(0).integers(0, 256, (200, SIZE, SIZE, 3), dtype=np.uint8)
    t = {
        "name": "image_uint8",
        "datatype": "UINT8",
        "shape": list(img.shape),
        "parameters": {"binary_data_size": img.nbytes},
    }
    head = json.dumps({"parameters": {"app": "blur"}, "inputs": [t]}).encode()
    r = httpx.post(srv.url + INFER, content=head + img.tobytes(), timeout=60,
                   headers={"Inference-Header-Content-Length": str(len(head))})  # fmt: skip
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [200, 5]
    assert seen == [len(head)]  # only the small JSON header, in place
