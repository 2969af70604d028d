"""Bad input on the binary-tensor HTTP path and on gRPC: every variant is a 4xx (HTTP) or
INVALID_ARGUMENT / NOT_FOUND (gRPC) with the reason code, and a mix of good and bad requests in
flight together loses nothing: every accepted image is answered once, and nothing else reaches
the engine."""

import asyncio
import json

import aiohttp
import grpc
import httpx
import numpy as np
import pytest

from otas.server.grpc_api import grpc_predict_v2_pb2 as pb
from otas.server.grpc_api import grpc_predict_v2_pb2_grpc as pb_grpc
from otas.server.tensors import join_bytes
from otas.types import App
from tests.server.helpers import MAX_BODY, SIZE, PacedRunner, paced_profile, png, serving

MODEL, INFER = "tiny_test", "/v2/models/tiny_test/infer"
IMAGES = [png(s) for s in range(3)]
PIXELS = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8).tobytes()
NOT_IMAGES = [b"hello world", b"", png(7)[:40], b"\x89PNG\r\n\x1a\n" + b"\0" * 64]


@pytest.fixture(scope="module")
def srv(runner):
    prof = paced_profile(base_ms=5, per_image_ms=1)
    # SLOs of seconds: what is tested here is validation and exact accounting, not a deadline that a
    # loaded CI host (the whole batch of good and bad requests at once) could miss
    apps = [
        App("novel", 8000.0, 1.0, "novel"),
        App("lowlight", 8000.0, 2.0, "lowlight"),
        App("blur", 8000.0, 1.0, "blur"),
    ]
    with serving(PacedRunner(runner, prof), prof, grpc=True, apps=apps) as (s, _):
        yield s


# -- HTTP, binary tensor extension -----------------------------------------------------------------
def binary(inputs: list[tuple[dict, bytes]], params=None, outputs=None, header_length=None, cut: int = 0, extra=b""):
    """(body, headers) of a binary-extension request; each input's binary_data_size is its bytes'
    length unless the dict sets it. `cut` drops bytes off the end; `header_length` overrides the header."""
    head = {"parameters": {"app": "novel"} if params is None else params, "inputs": []}
    for t, raw in inputs:
        t = {**t, "parameters": {"binary_data_size": len(raw), **t.get("parameters", {})}}
        head["inputs"].append(t)
    if outputs is not None:
        head["outputs"] = outputs
    js = json.dumps(head).encode()
    body = js + b"".join(raw for _, raw in inputs) + extra
    body = body[: len(body) - cut]
    return body, {"Inference-Header-Content-Length": str(len(js) if header_length is None else header_length)}


def img_bytes(items=IMAGES, shape=None, **kw) -> tuple[dict, bytes]:
    return {"name": "image", "datatype": "BYTES", "shape": [len(items)] if shape is None else shape, **kw}, join_bytes(
        items
    )


def img_uint8(raw=PIXELS, n=2, name="image_uint8", datatype="UINT8", **kw) -> tuple[dict, bytes]:
    return {"name": name, "datatype": datatype, "shape": [n, SIZE, SIZE, 3], **kw}, raw


def resized(raw: bytes, k: int) -> bytes:
    """`raw` with k bytes dropped (k < 0) or zeros appended (k > 0)."""
    return raw[: len(raw) + k] if k < 0 else raw + b"\0" * k


SIZE_OF = len(join_bytes(IMAGES))
HTTP_BAD = (
    [(f"binary_data_size {d:+d}", binary([img_bytes(parameters={"binary_data_size": SIZE_OF + d})]), 400,
      "bad_binary_size") for d in (-SIZE_OF, -100, -1, 1, 100, 10**9)]
    + [(f"truncated by {k}", binary([img_bytes()], cut=k), 400, "bad_binary_size") for k in (1, 17, SIZE_OF // 2)]
    + [(f"extra {k} bytes", binary([img_bytes()], extra=b"\0" * k), 400, "bad_binary_size") for k in (1, 9)]
    + [(f"header length {h!r}", binary([img_bytes()], header_length=h), 400, "bad_header_length")
       for h in (10**6, SIZE_OF + 10_000, "abc", "-5", "0", "")]
    + [(f"header length {k}: cuts the JSON", binary([img_bytes()], header_length=k), 400, "bad_json") for k in (5, 40)]
    + [(f"BYTES shape [{n}] for 3", binary([img_bytes(shape=[n])]), 400, "bad_shape") for n in (1, 2, 4, 9)]
    + [(f"BYTES shape {s}", binary([img_bytes(shape=s)]), 400, "bad_shape") for s in ([3, 2], [], [1, 3])]
    + [("BYTES length prefix past the end", binary([({"name": "image", "datatype": "BYTES", "shape": [1]},
        (1000).to_bytes(4, "little") + b"abc")]), 400, "bad_payload")]
    + [(f"UINT8 {k:+d} bytes", binary([img_uint8(resized(PIXELS, k))]), 400, "bad_shape") for k in (-1, -768, 1, 3)]
    + [(f"UINT8 shape N={n} for 2 images", binary([img_uint8(n=n)]), 400, "bad_shape") for n in (1, 3)]
    + [("UINT8 sent as FP32 bytes", binary([img_uint8(name="image_fp32", datatype="FP32")]), 400, "bad_shape")]
    + [("datatype not the input's", binary([img_uint8(name="image_fp32")]), 400, "bad_datatype")]
    + [("unknown input name", binary([img_uint8(name="pixels")]), 400, "unknown_input")]
    + [("two inputs", binary([img_bytes(), img_bytes()]), 400, "bad_request")]
    + [("data and binary", binary([img_bytes(data=["x"])]), 400, "bad_payload")]
    + [(f"binary_data_size {v!r}", binary([img_bytes(parameters={"binary_data_size": v})]), 400, "bad_binary_size")
       for v in ("12", 1.5, True)]
    + [("unknown app", binary([img_bytes()], params={"app": "nope"}), 400, "unknown_app")]
    + [("missing app", binary([img_bytes()], params={}), 400, "missing_app")]
    + [(f"non-image #{i}", binary([img_bytes([IMAGES[0], bad])]), 400, "not_an_image") for i, bad in
       enumerate(NOT_IMAGES)]
    + [("binary_data_output 'yes'", binary([img_bytes()], params={"app": "novel", "binary_data_output": "yes"}), 400,
        "bad_request")]
    + [("unknown output", binary([img_bytes()], outputs=[{"name": "logits"}]), 400, "unknown_output")]
    + [(f"oversize ({n} images)", binary([img_bytes([png(0, 64)] * n)]), 413, "too_large") for n in (6, 40)]
)  # fmt: skip


@pytest.mark.parametrize("what,request_,status,reason", HTTP_BAD, ids=[c[0] for c in HTTP_BAD])
def test_binary_http_bad_input(srv, what, request_, status, reason):
    body, headers = request_
    r = httpx.post(srv.url + INFER, content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and r.json()["reason"] == reason, r.text
    assert len(r.json()["error"]) > 20


def test_compressed_body_is_415(srv):
    body, headers = binary([img_bytes()])
    r = httpx.post(srv.url + INFER, content=body, headers={**headers, "Content-Encoding": "gzip"})
    assert r.status_code == 415 and r.json()["reason"] == "unsupported_encoding"


# -- gRPC ----------------------------------------------------------------------------------------------
def grpc_request(datatype="BYTES", name=None, shape=None, raw=None, contents=None, app="novel", **kw):
    req = pb.ModelInferRequest(model_name=MODEL, **kw)
    if app is not None:
        req.parameters["app"].string_param = app
    t = req.inputs.add(name=name or ("image" if datatype == "BYTES" else "image_uint8"), datatype=datatype)
    t.shape.extend(shape if shape is not None else ([3] if datatype == "BYTES" else [2, SIZE, SIZE, 3]))
    if contents is not None:
        getattr(t.contents, contents[0]).extend(contents[1])
    if raw is not None or contents is None:
        req.raw_input_contents.append(
            raw if raw is not None else (join_bytes(IMAGES) if datatype == "BYTES" else PIXELS)
        )
    return req


def two_raw():
    req = grpc_request()
    req.raw_input_contents.append(b"")
    return req


Code = grpc.StatusCode
GRPC_BAD = (
    [(f"raw BYTES cut by {k}", grpc_request(raw=join_bytes(IMAGES)[:-k]), None) for k in (1, 5, SIZE_OF // 2)]
    + [(f"raw UINT8 {k:+d} bytes", grpc_request("UINT8", raw=resized(PIXELS, k)), "bad_shape") for k in (-1, -768, 2)]
    + [(f"BYTES shape [{n}] for 3", grpc_request(shape=[n]), "bad_shape") for n in (1, 2, 4)]
    + [(f"UINT8 shape N={n}", grpc_request("UINT8", shape=[n, SIZE, SIZE, 3]), "bad_shape") for n in (1, 3)]
    + [("UINT8 shape 8x8", grpc_request("UINT8", shape=[2, 8, 8, 3]), "bad_shape")]
    + [("two raw contents for one input", two_raw(), "bad_payload")]
    + [("contents and raw", grpc_request(raw=join_bytes(IMAGES), contents=("bytes_contents", IMAGES)), "bad_payload")]
    + [(f"contents of {n} for 3", grpc_request(contents=("bytes_contents", IMAGES[:n])), "bad_shape") for n in (1, 2)]
    + [("UINT8 contents short", grpc_request("UINT8", contents=("uint_contents", [1, 2, 3])), "bad_shape")]
    + [("UINT8 contents over 255", grpc_request("UINT8", contents=("uint_contents", [256] * 2 * SIZE * SIZE * 3)),
        "bad_payload")]
    + [("UINT8 as int contents", grpc_request("UINT8", contents=("int_contents", [1] * 2 * SIZE * SIZE * 3)),
        "bad_payload")]
    + [("unknown input", grpc_request(name="pixels"), "unknown_input")]
    + [("datatype not the input's", grpc_request("FP32", name="image_uint8", raw=PIXELS), "bad_datatype")]
    + [("unknown app", grpc_request(app="nope"), "unknown_app"), ("missing app", grpc_request(app=None), "missing_app")]
    + [(f"non-image #{i}", grpc_request(raw=join_bytes([IMAGES[1], bad, IMAGES[2]])), "not_an_image")
       for i, bad in enumerate(NOT_IMAGES)]
    + [("unknown output", grpc_request(outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="x")]),
        "unknown_output")]
    + [(f"oversize ({n} images)", grpc_request(raw=join_bytes([png(0, 64)] * n), shape=[n]), "too_large")
       for n in (6, 9)]
)  # fmt: skip


@pytest.fixture(scope="module")
def stub(srv):
    with grpc.insecure_channel(srv.grpc_target) as ch:
        yield pb_grpc.GRPCInferenceServiceStub(ch)


def call_error(stub, req) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req, timeout=30)
    return e.value


@pytest.mark.parametrize("what,req,reason", GRPC_BAD, ids=[c[0] for c in GRPC_BAD])
def test_grpc_bad_input(stub, what, req, reason):
    e = call_error(stub, req)
    got = dict(e.trailing_metadata() or ())["otas-reason"]
    assert e.code() == Code.INVALID_ARGUMENT and e.details().startswith(f"{got}: ") and len(e.details()) > 30
    assert got == reason or (reason is None and got in ("bad_shape", "bad_payload")), e.details()


def test_grpc_unknown_model_and_oversize(stub):
    for req in (grpc_request(model_version="2"), pb.ModelInferRequest(model_name="nope")):
        e = call_error(stub, req)
        assert e.code() == Code.NOT_FOUND and e.details().split(":")[0] in ("unknown_model", "unknown_version")
    e = call_error(stub, grpc_request(raw=b"x" * (2 * MAX_BODY + 1), shape=[1]))  # past gRPC's own limit
    assert e.code() == Code.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as ei:
        stub.ModelReady(pb.ModelReadyRequest(name="nope"), timeout=10)
    assert ei.value.code() == Code.NOT_FOUND


# -- nothing lost ------------------------------------------------------------------------------------
def served_total(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("otas_requests_total{"))


def test_good_and_bad_together_lose_nothing(srv):
    """Good requests (3 images each) interleaved with every bad variant, over both transports at
    once: each good one answered with 3 labels, each bad one refused, and the engine's books count
    exactly the good images."""
    good_http = binary([img_bytes()], params={"app": "novel", "binary_data_output": True})
    good_grpc = grpc_request()
    jobs = [("http", good_http, True), ("grpc", good_grpc, True)] * 12
    jobs += [("http", c[1], False) for c in HTTP_BAD if c[2] == 400] + [("grpc", c[1], False) for c in GRPC_BAD]
    order = np.random.default_rng(0).permutation(len(jobs))
    before = served_total(srv.url)

    async def main():
        async with aiohttp.ClientSession() as http, grpc.aio.insecure_channel(srv.grpc_target) as ch:
            astub = pb_grpc.GRPCInferenceServiceStub(ch)

            async def one(kind, req, good):
                if kind == "http":
                    async with http.post(srv.url + INFER, data=req[0], headers=req[1]) as r:
                        body = await r.read()
                        if good:
                            assert r.status == 200, body
                            n = int(r.headers["Inference-Header-Content-Length"])
                            return [o["shape"] for o in json.loads(body[:n])["outputs"]][1] == [3]
                        return r.status == 400 and json.loads(body)["reason"]
                try:
                    resp = await astub.ModelInfer(req, timeout=30)
                    return good and list(resp.outputs[1].shape) == [3]
                except grpc.aio.AioRpcError as e:
                    return not good and e.code() == Code.INVALID_ARGUMENT

            return await asyncio.gather(*(one(*jobs[i]) for i in order))

    results = asyncio.run(main())
    assert all(results), [jobs[i][:1] + (r,) for i, r in zip(order, results, strict=True) if not r]
    assert served_total(srv.url) - before == 3 * 24  # the good images, each counted once; no bad one reached it
    assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200


# -- refusals --------------------------------------------------------------------------------------
def test_refusals_map_to_grpc_codes():
    from otas.engine.serving import NotServed
    from otas.server.errors import ProtocolError
    from otas.server.grpc_api.service import status_of

    cases = [
        (NotServed("rejected", "queue_full", "x"), Code.RESOURCE_EXHAUSTED),
        (NotServed("rejected", "infeasible", "x"), Code.UNAVAILABLE),
        (NotServed("expired", "deadline_unreachable", "x"), Code.UNAVAILABLE),
        (NotServed("error", "shutting_down", "x"), Code.UNAVAILABLE),
        (NotServed("error", "batch_failed", "x"), Code.INTERNAL),
        (ProtocolError(404, "unknown_model", "x"), Code.NOT_FOUND),
        (ProtocolError(413, "too_large", "x"), Code.INVALID_ARGUMENT),
        (ProtocolError(400, "bad_shape", "x"), Code.INVALID_ARGUMENT),
        (RuntimeError("boom"), Code.INTERNAL),
    ]
    for e, code in cases:
        assert status_of(e)[0] == code, e


def test_grpc_queue_full_is_resource_exhausted_and_the_rest_are_served(paced):
    """A burst over a queue of 4: the overflow is RESOURCE_EXHAUSTED `queue_full` at once, every
    accepted call is answered."""
    req = grpc_request(raw=join_bytes(IMAGES[:1]), shape=[1])

    async def main(target):
        async with grpc.aio.insecure_channel(target) as ch:
            astub = pb_grpc.GRPCInferenceServiceStub(ch)

            async def one():
                try:
                    return await astub.ModelInfer(req, timeout=30)
                except grpc.aio.AioRpcError as e:
                    return e

            return await asyncio.gather(*(one() for _ in range(24)))

    with serving(paced, paced_profile(), max_queue=4, grpc=True) as (s, _):
        res = asyncio.run(main(s.grpc_target))
    served = [r for r in res if isinstance(r, pb.ModelInferResponse)]
    refused = [r for r in res if not isinstance(r, pb.ModelInferResponse)]
    assert served and refused and len(served) + len(refused) == 24 and sum(paced.sizes) == len(served)
    full = [e for e in refused if e.code() == Code.RESOURCE_EXHAUSTED and e.details().startswith("queue_full: ")]
    # an accepted call whose batch would finish it late is answered UNAVAILABLE with the reason
    late = [
        e
        for e in refused
        if e.code() == Code.UNAVAILABLE and e.details().startswith(("deadline_unreachable: ", "infeasible: "))
    ]
    assert full and len(full) + len(late) == len(refused), [(e.code(), e.details()) for e in refused]


def test_grpc_shares_the_front_door(srv):
    """gRPC ModelInfer goes through the same front door as HTTP: when the host holds all it may,
    the call fails UNAVAILABLE `overloaded` before any work, and the door counts it; once there is
    room again, calls are admitted, and each leaves the door as it ends."""
    door = srv.app.state.guard.door
    assert door is not None
    refused, rate, floor = door.refused, door.rate, door.floor

    async def call():
        async with grpc.aio.insecure_channel(srv.grpc_target) as ch:
            return await pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(grpc_request(), timeout=30)

    door.rate, door.floor = 1e-9, 0  # limit 0: the host holds all it may
    try:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            asyncio.run(call())
        assert e.value.code() == Code.UNAVAILABLE and "overloaded" in e.value.details()
        assert door.refused == refused + 1
    finally:
        door.rate, door.floor = rate, floor
    assert list(asyncio.run(call()).outputs[1].shape) == [3]
    assert door.in_flight == 0
