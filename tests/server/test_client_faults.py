"""Every way a client can get the body wrong is a 4xx with a reason, never a 500 with a traceback:
numbers beyond any type (1e999, thousands of digits), nesting a hundred thousand deep, wrong types
anywhere, images that trip the decoder's own bomb check; checked over HTTP (small bodies parsed in
place, large ones in the parser process) and by fuzzing the parser and the validation directly."""

import base64
import dataclasses
import json
import logging

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otas.server.errors import ProtocolError
from otas.server.http_codec import parse_infer
from otas.server.parsing import INLINE
from otas.server.protocol import MAX_ID, InputTensor, build_request
from otas.server.tensors import join_bytes
from tests.server.helpers import APPS, SIZE, PacedRunner, b64png, infer_body, paced_profile, png, serving
from tests.server.test_decode_abuse import png_header

INFER, CLASSIFY = "/v2/models/tiny_test/infer", "/v1/apps/novel/classify"
HUGE_INT = "9" * 5000  # over Python's 4300-digit limit for int(str)
DEEP = 100_000


@pytest.fixture(scope="module")
def srv(runner):
    prof = paced_profile(5, 1)
    # SLOs of seconds: what is under test is the answer to a malformed body, and a request the server cannot
    # admit in time is refused before its images are decoded (503), so a host that stalls past a short SLO
    # would answer a bad image with 503, not the 400 under test
    apps = [dataclasses.replace(a, slo_ms=10 * a.slo_ms) for a in APPS]
    with serving(PacedRunner(runner, prof), prof, apps=apps, max_body=1 << 20) as (s, _):
        with httpx.Client(base_url=s.url, timeout=60) as c:
            yield c


@pytest.fixture(autouse=True)
def no_tracebacks(caplog):
    caplog.set_level(logging.INFO, logger="otas")
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def raw_json(text: str) -> dict:
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


def infer_text(**fields: str) -> str:
    """An infer body as text, with some fields replaced by raw JSON text (numbers no Python type holds)."""
    t = {"name": '"image"', "datatype": '"BYTES"', "shape": "[1]", "data": json.dumps([b64png()])}
    t.update({k: v for k, v in fields.items() if k in t})
    params = fields.get("parameters", '{"app": "novel"}')
    inp = "{" + ", ".join(f'"{k}": {v}' for k, v in t.items()) + "}"
    rid = fields.get("id", '"x"')
    return f'{{"id": {rid}, "parameters": {params}, "inputs": [{inp}]}}'


TOP_K = ["1e999", "-1e999", "1e308", "-5", "0", "2.5", "true", '"x"', f'"{HUGE_INT}"', HUGE_INT, "[]", "{}",
         '"1e3"', '"²"', "NaN", "Infinity", "1000000", "99999999999"]  # fmt: skip
NUMBERS = [HUGE_INT, f"-{HUGE_INT}", "1e999", "-1e999", "NaN", "Infinity", "1" + "0" * 400]


NOT_JSON = (HUGE_INT, "1e999", "NaN", "Infinity", "1" + "0" * 400)
"""Numbers no 64-bit type holds, and RFC 8259's missing non-finite ones: not JSON the server parses."""


def why(v: str, reason: str) -> str:
    """The reason for a number in some field: bad_json for one of NOT_JSON, else the field's own."""
    return "bad_json" if not v.startswith('"') and any(x in v for x in NOT_JSON) else reason


CASES = (
    [(f"classify top_k {k[:12]}", CLASSIFY, raw_json(f'{{"image": "{b64png()}", "top_k": {k}}}'),
      why(k, "bad_top_k")) for k in TOP_K]
    + [(f"query top_k {q[:12]}", CLASSIFY + f"?top_k={q}", raw_json(f'{{"image": "{b64png()}"}}'), "bad_top_k")
       for q in ("9" * 5000, "-1", "1e999", "0x10", "²", "")]
    + [(f"multipart top_k {q[:12]}", CLASSIFY, {"files": {"image": ("x.png", png(), "image/png")},
        "data": {"top_k": q}}, "bad_top_k") for q in ("9" * 5000, "1.5", "-3")]
    + [(f"{kind} nested {DEEP} deep", path, raw_json(opener * DEEP + closer * DEEP), "bad_json")
       for kind, path in (("infer", INFER), ("classify", CLASSIFY)) for opener, closer in (("[", "]"), ('{"a":', "}"))]
    + [(f"infer nested {DEEP} deep, unclosed", INFER, raw_json("[" * DEEP), "bad_json")]
    + [(f"{HUGE_INT[:3]}... digits as the whole body", INFER, raw_json(HUGE_INT), "bad_json")]
    + [(f"data element {v[:12]}", INFER, raw_json(infer_text(data=f"[{v}]")), why(v, "bad_payload")) for v in NUMBERS]
    + [(f"UINT8 element {v[:12]}", INFER, raw_json(infer_text(datatype='"UINT8"', shape=f"[1, {SIZE}, {SIZE}, 3]",
        data=f"[{v}" + ", 0" * (SIZE * SIZE * 3 - 1) + "]")), why(v, "bad_payload")) for v in NUMBERS]
    + [(f"shape {v[:12]}", INFER, raw_json(infer_text(shape=f"[{v}]")), why(v, "bad_shape")) for v in NUMBERS]
    + [(f"id {v[:12]}", INFER, raw_json(infer_text(id=v)), None) for v in NUMBERS]
    + [(f"app {v[:12]}", INFER, raw_json(infer_text(parameters=f'{{"app": {v}}}')), why(v, "missing_app"))
       for v in NUMBERS]
    + [(f"header length {h[:8]!r}", INFER, {"content": json.dumps(infer_body()).encode(),
        "headers": {"Inference-Header-Content-Length": h}}, "bad_header_length")
       for h in (b"9" * 5000, "²".encode("latin-1"), "１２".encode(), b"1e3", b"-0", b"0x10")]
    + [(f"bomb header {w}x{h}", CLASSIFY, {"content": png_header(w, h, 8, 2), "headers": {"content-type": "image/png"}},
        "not_an_image") for w, h in [(100_000, 100_000), (2**31 - 1, 1), (1, 2**31 - 1), (70_000, 70_000)]]
    + [("bomb header in JSON", CLASSIFY, {"json": {"image": base64.b64encode(png_header(100_000, 100_000)).decode()}},
        "not_an_image")]
)  # fmt: skip


@pytest.mark.parametrize("what,path,kw,reason", CASES, ids=[c[0] for c in CASES])
def test_client_faults_are_400(srv, what, path, kw, reason):
    r = srv.post(path, **kw)
    if reason is None:  # a request id is any JSON value: answered (its text echoed), or a 400, never a 500
        assert r.status_code in (200, 400), r.text
        return
    assert r.status_code == 400, r.text
    assert r.json()["reason"] == reason and len(r.json()["error"]) > 15, r.text


def test_large_bodies_take_the_parser_process(srv):
    n = 24  # over INLINE as JSON numbers: parsed in the child, same answer as binary
    img = np.random.default_rng(0).integers(0, 256, (n, SIZE, SIZE, 3))
    body = {"parameters": {"app": "novel"}, "inputs": [{"name": "image_uint8", "datatype": "UINT8",
            "shape": list(img.shape), "data": img.ravel().tolist()}]}  # fmt: skip
    assert len(json.dumps(body)) > INLINE
    r = srv.post(INFER, json=body)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [n, 5], r.text
    body["inputs"][0]["data"][7] = "7"
    assert srv.post(INFER, json=body).json()["reason"] == "bad_payload"  # errors cross the process boundary


@pytest.mark.parametrize(
    "rid,status",
    [('"x"', 200), ("17", 200), ("2.5", 200), ('"' + "i" * MAX_ID + '"', 200), ('"' + "i" * (MAX_ID + 1) + '"', 400),
     ("[1, 2]", 400), ('{"a": 1}', 400), ("true", 400), ("[" + ",".join(["7"] * 5000) + "]", 400)],
)  # fmt: skip
def test_request_id_is_a_bounded_string_echoed_back(srv, rid, status):
    r = srv.post(INFER, **raw_json(infer_text(id=rid)))
    assert r.status_code == status, r.text
    if status == 200:
        assert r.json()["id"] == str(json.loads(rid))
    else:
        assert r.json()["reason"] == "bad_request" and "`id`" in r.json()["error"]


# -- fuzzing the parser and the validation directly --------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=json_values | st.sampled_from(["image", "image_uint8", "image_fp32"]),
    datatype=json_values | st.sampled_from(["BYTES", "UINT8", "FP32"]),
    shape=json_values | st.lists(st.integers(-2, 300), max_size=5),
    data=json_values,
    params=json_values | st.just({"app": "novel"}),
    binary=st.none() | st.integers(-3, 2**40) | json_values,
)
def test_any_json_header_is_a_request_or_a_protocol_error(name, datatype, shape, data, params, binary):
    inp = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    if binary is not None:
        inp["parameters"] = {"binary_data_size": binary}
    head = json.dumps({"parameters": params, "inputs": [inp]}).encode()
    for body, hl in ((head, None), (head + join_bytes([png()]), str(len(head)))):
        try:
            parse_infer(body, hl, SIZE)
        except ProtocolError as e:
            assert 400 <= e.status < 500 and e.reason and len(e.message) > 10


@settings(max_examples=300, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6))
def test_corrupted_valid_bodies_are_requests_or_protocol_errors(flips):
    body = bytearray(json.dumps(infer_body("novel", 2)).encode())
    for i, v in flips:
        body[i % len(body)] = v
    try:
        parse_infer(bytes(body), None, SIZE)
    except ProtocolError as e:
        assert 400 <= e.status < 500


@settings(max_examples=300, deadline=None)
@given(
    dtype=st.sampled_from(["UINT8", "FP32"]),
    data=st.lists(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3), max_size=8),
)
def test_typed_tensors_accept_only_their_numbers(dtype, data):
    n = SIZE * SIZE * 3
    full = (data * (n // max(len(data), 1) + 1))[:n] if data else []
    t = InputTensor("image", dtype, [1, SIZE, SIZE, 3], full)
    ok_types = {int} if dtype == "UINT8" else {int, float}
    try:
        build_request(None, {"app": "novel"}, [t], SIZE)
    except ProtocolError as e:
        assert e.status == 400
        return
    assert full and {type(x) for x in full} <= ok_types  # accepted: only numbers of the datatype, in range
