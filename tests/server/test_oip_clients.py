"""The Open Inference Protocol as the standard clients speak it: tritonclient over HTTP (binary
tensors and JSON) and gRPC, and typed gRPC contents, against the real server on loopback. Every
path must give the answers `/v1/apps/{app}/classify` gives for the same images."""

import base64

import grpc
import httpx
import numpy as np
import pytest

from otas.engine.images import decode_image
from otas.server.grpc_api import grpc_predict_v2_pb2 as pb
from otas.server.grpc_api import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.server.helpers import SIZE, PacedRunner, jpeg, paced_profile, png, serving

tgrpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient is a dev extra (pip install -e '.[dev]')")
thttp = pytest.importorskip("tritonclient.http", reason="tritonclient is a dev extra (pip install -e '.[dev]')")

MODEL, APP = "tiny_test", "lowlight"
# Variants: PNGs at the model's size (also sent as pixels), larger PNGs and JPEGs (resized by the server).
ENCODED = [png(s) for s in range(5)] + [png(10 + s, 24) for s in range(2)] + [jpeg(20 + s, 20) for s in range(2)]
PIXELS = np.stack([decode_image(png(s), SIZE) for s in range(5)])  # (5, SIZE, SIZE, 3) uint8


@pytest.fixture(scope="module")
def srv(runner):
    # fixed:0, so that every path runs the images at the same γ and the answers can be compared.
    prof = paced_profile(base_ms=5, per_image_ms=1)
    with serving(PacedRunner(runner, prof), prof, policy="fixed:0", grpc=True) as (s, _):
        yield s


@pytest.fixture(scope="module")
def reference(srv) -> dict[bytes, np.ndarray]:
    """Image bytes -> the probabilities /v1/apps/{app}/classify gives, in class order."""
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        classes = {a["name"]: a["classes"] for a in c.get("/v1/apps").json()}[APP]
        ref, labels = {}, {}
        for data in ENCODED:
            r = c.post(
                f"/v1/apps/{APP}/classify?top_k={len(classes)}", content=data, headers={"content-type": "image/png"}
            )
            assert r.status_code == 200, r.text
            probs = {t["label"]: t["prob"] for t in r.json()["top_k"]}
            ref[data], labels[data] = np.array([probs[k] for k in classes]), r.json()["label"]
    return {"probs": ref, "labels": labels}


def check(result, sent: list[bytes], reference) -> None:
    """A client's InferResult against classify: the same labels and probabilities."""
    probs, labels = result.as_numpy("probs"), result.as_numpy("label")
    want = np.stack([reference["probs"][d] for d in sent])
    assert probs.shape == want.shape and np.allclose(probs, want, atol=2e-6)
    assert [lab.decode() if isinstance(lab, bytes) else lab for lab in labels] == [reference["labels"][d] for d in sent]
    assert result.as_numpy("gamma").tolist() == [0] * len(sent) and result.as_numpy("deadline_met").all()
    lat = result.as_numpy("latency_ms")
    assert lat.shape == (len(sent), 3) and (lat[:, 2] >= lat[:, 1]).all()


def as_bytes_tensor(items: list[bytes]) -> np.ndarray:
    return np.array(items, dtype=np.object_)


def pixels(datatype: str, idx: list[int]) -> np.ndarray:
    x = PIXELS[idx]
    return x if datatype == "UINT8" else (x / 255).astype(np.float32)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_bytes(srv, reference, binary):
    with thttp.InferenceServerClient(srv.url[len("http://") :]) as c:
        for sent in (ENCODED, ENCODED[5:6], ENCODED[::-2]):
            x = thttp.InferInput("image", [len(sent)], "BYTES")
            # JSON carries BYTES as strings: the images base64-encoded (otas's convention)
            x.set_data_from_numpy(as_bytes_tensor(sent if binary else [base64.b64encode(d) for d in sent]), binary)
            outputs = None if binary else [thttp.InferRequestedOutput(n, binary_data=False) for n in OUT_NAMES]
            check(c.infer(MODEL, [x], outputs=outputs, parameters={"app": APP}), sent, reference)


OUT_NAMES = ["probs", "label", "gamma", "deadline_met", "latency_ms"]
TENSORS = [(name, dt) for dt in ("UINT8", "FP32") for name in (f"image_{dt.lower()}", "image")]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name,datatype", TENSORS)
def test_http_tensors(srv, reference, name, datatype, binary):
    with thttp.InferenceServerClient(srv.url[len("http://") :]) as c:
        for idx in ([0, 2, 4], [3]):  # FP32 in JSON: 3 images are 46 KB of the 64 KiB limit
            x = thttp.InferInput(name, [len(idx), SIZE, SIZE, 3], datatype)
            x.set_data_from_numpy(pixels(datatype, idx), binary_data=binary)
            # outputs half binary, half JSON: the per-output flag wins
            outputs = [thttp.InferRequestedOutput(n, binary_data=i % 2 == 0) for i, n in enumerate(OUT_NAMES)]
            res = c.infer(MODEL, [x], outputs=outputs, parameters={"app": APP}, request_id=f"r{len(idx)}")
            check(res, [ENCODED[i] for i in idx], reference)
            assert res.get_response()["id"] == f"r{len(idx)}"


def test_http_metadata_names_each_input_once(srv):
    with thttp.InferenceServerClient(srv.url[len("http://") :]) as c:
        meta = c.get_model_metadata(MODEL)
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)
        assert "binary_tensor_data" in c.get_server_metadata()["extensions"]
        stats = c.get_inference_statistics(MODEL)["model_stats"][0]
        assert stats["inference_count"] > 0 and stats["inference_stats"]["success"]["ns"] > 0
    names = [i["name"] for i in meta["inputs"]]
    assert names == ["image", "image_uint8", "image_fp32"] and len(set(names)) == len(names)
    assert [i["datatype"] for i in meta["inputs"]] == ["BYTES", "UINT8", "FP32"]


def test_grpc_bytes_and_tensors(srv, reference):
    with tgrpc.InferenceServerClient(srv.grpc_target) as c:
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)
        # the KServe v2 gRPC service has no statistics method: gRPC does not claim the extension
        assert "statistics" not in c.get_server_metadata(as_json=True)["extensions"]
        meta = c.get_model_metadata(MODEL, as_json=True)
        assert [i["name"] for i in meta["inputs"]] == ["image", "image_uint8", "image_fp32"]
        assert meta["inputs"][1]["shape"] == ["-1", str(SIZE), str(SIZE), "3"]  # int64 as JSON strings
        for sent in (ENCODED, ENCODED[7:]):
            x = tgrpc.InferInput("image", [len(sent)], "BYTES")
            x.set_data_from_numpy(as_bytes_tensor(sent))
            check(c.infer(MODEL, [x], parameters={"app": APP}), sent, reference)
        for name, datatype in TENSORS:
            x = tgrpc.InferInput(name, [2, SIZE, SIZE, 3], datatype)
            x.set_data_from_numpy(pixels(datatype, [4, 1]))
            outputs = [tgrpc.InferRequestedOutput(n) for n in ("label", "probs", "gamma", "deadline_met", "latency_ms")]
            res = c.infer(MODEL, [x], outputs=outputs, parameters={"app": APP}, request_id="g1")
            check(res, [ENCODED[4], ENCODED[1]], reference)
            assert res.get_response().id == "g1" and [o.name for o in res.get_response().outputs][0] == "label"


def test_grpc_typed_contents(srv, reference):
    """Typed `contents` instead of raw bytes: BYTES as encoded images, UINT8 and FP32 as pixels."""
    idx = [2, 0]
    with grpc.insecure_channel(srv.grpc_target) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        for datatype in ("BYTES", "UINT8", "FP32"):
            req = pb.ModelInferRequest(model_name=MODEL, id="t")
            req.parameters["app"].string_param = APP
            if datatype == "BYTES":
                t = req.inputs.add(name="image", datatype="BYTES", shape=[2])
                t.contents.bytes_contents.extend([ENCODED[i] for i in idx])
            elif datatype == "UINT8":
                t = req.inputs.add(name="image_uint8", datatype="UINT8", shape=[2, SIZE, SIZE, 3])
                t.contents.uint_contents.extend(pixels("UINT8", idx).ravel().tolist())
            else:
                t = req.inputs.add(name="image_fp32", datatype="FP32", shape=[2, SIZE, SIZE, 3])
                t.contents.fp32_contents.extend(pixels("FP32", idx).ravel().tolist())
            resp = stub.ModelInfer(req, timeout=30)
            assert resp.id == "t" and resp.parameters["app"].string_param == APP
            check(tgrpc.InferResult(resp), [ENCODED[i] for i in idx], reference)


def check_classes(got: np.ndarray, sent: list[bytes], k: int, reference) -> None:
    """Triton's classification extension: per image the top k as "score:index:label", best first."""
    classes = len(next(iter(reference["probs"].values())))
    assert got.shape == (len(sent), min(k, classes))
    for row, data in zip(got, sent, strict=True):
        want = reference["probs"][data]
        texts = [x.decode() if isinstance(x, bytes) else x for x in row]  # (JSON gives str, binary bytes)
        parsed = [(float(p), int(i), label) for p, i, label in (t.split(":", 2) for t in texts)]
        assert [i for _, i, _ in parsed] == list(np.argsort(-want, kind="stable")[: len(row)])
        assert np.allclose([p for p, _, _ in parsed], want[[i for _, i, _ in parsed]], atol=2e-6)
        assert parsed[0][2] == reference["labels"][data]


@pytest.mark.parametrize("k", [1, 3, 50])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_classification_extension(srv, reference, k, binary):
    with thttp.InferenceServerClient(srv.url[len("http://") :]) as c:
        for sent in (ENCODED[:3], ENCODED[6:7]):
            x = thttp.InferInput("image", [len(sent)], "BYTES")
            x.set_data_from_numpy(as_bytes_tensor(sent), binary_data=True)
            outputs = [
                thttp.InferRequestedOutput("probs", binary_data=binary, class_count=k),
                thttp.InferRequestedOutput("label", binary_data=binary),
            ]
            res = c.infer(MODEL, [x], outputs=outputs, parameters={"app": APP})
            check_classes(res.as_numpy("probs"), sent, k, reference)


@pytest.mark.parametrize("k", [1, 4])
def test_grpc_classification_extension(srv, reference, k):
    with tgrpc.InferenceServerClient(srv.grpc_target) as c:
        sent = ENCODED[2:5]
        x = tgrpc.InferInput("image", [len(sent)], "BYTES")
        x.set_data_from_numpy(as_bytes_tensor(sent))
        outputs = [tgrpc.InferRequestedOutput("probs", class_count=k), tgrpc.InferRequestedOutput("gamma")]
        res = c.infer(MODEL, [x], outputs=outputs, parameters={"app": APP})
        check_classes(res.as_numpy("probs"), sent, k, reference)


BAD_OUTPUTS = [
    ([{"name": "label", "parameters": {"classification": 2}}], "bad_classification"),
    ([{"name": "probs", "parameters": {"classification": 0}}], "bad_classification"),
    ([{"name": "probs", "parameters": {"classification": True}}], "bad_classification"),
    ([{"name": "probs", "parameters": {"classification": "3"}}], "bad_classification"),
    ([{"name": "probs", "parameters": {"classification": 2.5}}], "bad_classification"),
    ([{"name": "gamma"}, {"name": "gamma"}], "duplicate_output"),
    ([{"name": ["probs"], "parameters": {"classification": 2}}], "unknown_output"),
]


@pytest.mark.parametrize("outputs,reason", BAD_OUTPUTS)
def test_bad_output_requests_are_400(srv, outputs, reason):
    image = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(ENCODED[0]).decode()]}
    body = {"parameters": {"app": APP}, "inputs": [image], "outputs": outputs}
    r = httpx.post(f"{srv.url}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["reason"] == reason, r.text


def test_a_long_list_of_outputs_is_refused_at_once():
    """Thousands of output names (a 400 either way) are judged in linear time: the check runs on the
    event loop or a parser process, before anything else of the request."""
    import time

    from otas.server.errors import ProtocolError
    from otas.server.protocol import InputTensor, build_request

    t = InputTensor("image", "UINT8", [1, 32, 32, 3], data=[0] * 3072)
    many = [f"x{i}" for i in range(50_000)]
    for outputs, reason in ((["probs"] * 50_000, "duplicate_output"), (many, "unknown_output")):
        t0 = time.perf_counter()
        with pytest.raises(ProtocolError) as e:
            build_request(None, {"app": APP}, [t], 32, outputs=outputs)
        assert e.value.reason == reason and time.perf_counter() - t0 < 0.5
        assert len(e.value.message) < 500  # names a few, not all
