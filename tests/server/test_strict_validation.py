"""Tensors are validated as Triton validates them, on every path (JSON, binary tensors, gRPC all go
through `protocol.build_request`): UINT8 data are integers, FP32 data numbers (never strings,
booleans, nulls, floats for UINT8, lists other than the shape's nesting), and a BYTES input has one
dimension."""

import json

import grpc
import httpx
import numpy as np
import pytest

from otas.server.grpc_api import grpc_predict_v2_pb2 as pb
from otas.server.grpc_api import grpc_predict_v2_pb2_grpc as pb_grpc
from otas.server.tensors import join_bytes
from tests.server.helpers import SIZE, PacedRunner, b64png, paced_profile, png, serving

INFER = "/v2/models/tiny_test/infer"
N = SIZE * SIZE * 3
RNG = np.random.default_rng(0)
PIX = RNG.integers(0, 256, N).tolist()


@pytest.fixture(scope="module")
def srv(runner):
    prof = paced_profile(5, 1)
    with serving(PacedRunner(runner, prof), prof, grpc=True, max_body=1 << 20) as (s, _):
        yield s


def tensor(dtype: str, data: list, shape=None, name="image") -> dict:
    shape = [1, SIZE, SIZE, 3] if shape is None else shape
    return {"parameters": {"app": "novel"}, "inputs": [{"name": name, "datatype": dtype, "shape": shape, "data": data}]}


def spoil(value, where: int) -> list:
    """The pixels with one element replaced."""
    out = list(PIX)
    out[where] = value
    return out


BAD_UINT8 = [("1", "string"), (1.5, "float"), (1.0, "whole float"), (True, "true"), (False, "false"),
             (None, "null"), ([1], "nested list"), ({"v": 1}, "object"), (-1, "negative"), (256, "over 255"),
             (2**70, "over 64 bits")]  # fmt: skip
BAD_FP32 = [
    ("0.5", "string"),
    (True, "true"),
    (None, "null"),
    ([0.5], "nested list"),
    (2.0, "over 1"),
    (-0.1, "negative"),
]


@pytest.mark.parametrize("where", [0, N // 2, N - 1])
@pytest.mark.parametrize("value,what", BAD_UINT8, ids=[b[1] for b in BAD_UINT8])
def test_uint8_takes_integers_0_to_255(srv, value, what, where):
    for name in ("image", "image_uint8"):
        r = httpx.post(srv.url + INFER, json=tensor("UINT8", spoil(value, where), name=name))
        assert r.status_code == 400 and r.json()["reason"] == "bad_payload", r.text


def test_data_nested_as_the_shape_is_the_same_tensor(srv):
    """The protocol allows a tensor's natural multi-dimensional form (row-major), as KServe's samples
    send it: nested as the shape it answers as flat; nested otherwise it is a 400."""
    flat = httpx.post(srv.url + INFER, json=tensor("UINT8", PIX, name="image_uint8"))
    nested = np.asarray(PIX).reshape(1, SIZE, SIZE, 3).tolist()
    deep = httpx.post(srv.url + INFER, json=tensor("UINT8", nested, name="image_uint8"))
    assert flat.status_code == deep.status_code == 200, deep.text

    def answer(r):
        return {o["name"]: o["data"] for o in r.json()["outputs"] if o["name"] in ("label", "probs")}

    assert answer(flat) == answer(deep) and answer(flat)
    for bad in (np.asarray(PIX).reshape(1, SIZE * SIZE, 3).tolist(), [nested[0][0]] + nested[0][1:]):
        r = httpx.post(srv.url + INFER, json=tensor("UINT8", bad, name="image_uint8"))
        assert r.status_code == 400 and r.json()["reason"] == "bad_payload", r.text


@pytest.mark.parametrize("value,what", BAD_FP32, ids=[b[1] for b in BAD_FP32])
def test_fp32_takes_numbers_0_to_1(srv, value, what):
    data = spoil(value, 7)
    data = [x / 255 if type(x) is int else x for x in data]
    r = httpx.post(srv.url + INFER, json=tensor("FP32", data, name="image_fp32"))
    assert r.status_code == 400 and r.json()["reason"] == "bad_payload", r.text


def test_all_strings_and_all_floats_are_refused(srv):
    for dtype, data in (("UINT8", [str(x) for x in PIX]), ("UINT8", [float(x) for x in PIX]),
                        ("FP32", [str(x / 255) for x in PIX]), ("UINT8", [bool(x % 2) for x in PIX])):  # fmt: skip
        r = httpx.post(srv.url + INFER, json=tensor(dtype, data))
        assert r.status_code == 400 and r.json()["reason"] == "bad_payload", r.text


def test_good_tensors_still_pass(srv):
    assert httpx.post(srv.url + INFER, json=tensor("UINT8", PIX)).status_code == 200
    fp = [x / 255 for x in PIX]
    fp[0], fp[1] = 0, 1  # JSON integers are numbers too
    assert httpx.post(srv.url + INFER, json=tensor("FP32", fp)).status_code == 200


BYTES_SHAPES = [[1, 1], [2, 1], [1, 2], [], [1, 1, 1], [0]]


@pytest.mark.parametrize("shape", BYTES_SHAPES, ids=str)
def test_bytes_has_one_dimension_on_every_path(srv, shape):
    n = int(np.prod(shape)) if shape else 1
    items = [png(i) for i in range(max(n, 1))]
    r = httpx.post(srv.url + INFER, json=tensor("BYTES", [b64png(i) for i in range(len(items))], shape=shape))
    assert r.status_code == 400 and r.json()["reason"] == "bad_shape", r.text
    raw = join_bytes(items)
    t = {"name": "image", "datatype": "BYTES", "shape": shape, "parameters": {"binary_data_size": len(raw)}}
    head = json.dumps({"parameters": {"app": "novel"}, "inputs": [t]}).encode()
    r = httpx.post(srv.url + INFER, content=head + raw, headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and r.json()["reason"] == "bad_shape", r.text
    for typed in (False, True):
        req = pb.ModelInferRequest(model_name="tiny_test")
        req.parameters["app"].string_param = "novel"
        inp = req.inputs.add(name="image", datatype="BYTES", shape=shape)
        if typed:
            inp.contents.bytes_contents.extend(items)
        else:
            req.raw_input_contents.append(raw)
        with grpc.insecure_channel(srv.grpc_target) as ch, pytest.raises(grpc.RpcError) as e:
            pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("bad_shape: ")


def test_grpc_typed_contents_are_checked_as_json_is(srv):
    req = pb.ModelInferRequest(model_name="tiny_test")
    req.parameters["app"].string_param = "novel"
    req.inputs.add(name="image_uint8", datatype="UINT8", shape=[1, SIZE, SIZE, 3]).contents.uint_contents.extend(
        spoil(300, 3)
    )
    with grpc.insecure_channel(srv.grpc_target) as ch, pytest.raises(grpc.RpcError) as e:
        pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)
    assert e.value.details().startswith("bad_payload: ")


def test_a_three_dimensional_tensor_may_be_nested_as_sent():
    """Shape [H, W, 3] is one image; data nested as that shape is read before the shape gains its 1."""
    from otas.server.protocol import InputTensor, build_request

    nested = np.asarray(PIX).reshape(SIZE, SIZE, 3).tolist()
    for shape, data in (([SIZE, SIZE, 3], nested), ([SIZE, SIZE, 3], PIX), ([1, SIZE, SIZE, 3], [nested])):
        req = build_request(None, {"app": "novel"}, [InputTensor("image_uint8", "UINT8", shape, data=data)], SIZE)
        assert len(req.images) == 1 and (req.images[0] == np.asarray(PIX).reshape(SIZE, SIZE, 3)).all()
