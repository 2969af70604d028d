"""The real server on loopback: every endpoint, and every class of bad input -> 4xx with a reason."""

import base64

import httpx
import numpy as np
import pytest

from tests.server.helpers import SIZE, b64png, infer_body, png, serving


@pytest.fixture(scope="module")
def srv(runner):
    from tests.server.helpers import PacedRunner, paced_profile

    with serving(
        PacedRunner(
            runner,
            paced_profile(base_ms=5, per_image_ms=1),
        ),
        paced_profile(5, 1),
    ) as (s, _):
        with httpx.Client(base_url=s.url, timeout=30) as c:
            yield c


def test_health_and_metadata(srv):
    assert srv.get("/v2/health/live").json() == {"live": True}
    assert srv.get("/v2/health/ready").json() == {"ready": True}
    assert srv.get("/v2").json()["name"] == "otas"
    meta = srv.get("/v2/models/tiny_test").json()
    assert meta["name"] == "tiny_test" and {i["datatype"] for i in meta["inputs"]} == {"BYTES", "UINT8", "FP32"}
    assert len({i["name"] for i in meta["inputs"]}) == 3  # clients key inputs by name
    assert srv.get("/v2/models/tiny_test/ready").json()["ready"] is True
    apps = srv.get("/v1/apps").json()
    assert [a["name"] for a in apps] == ["novel", "lowlight", "blur"] and apps[0]["slo_ms"] == 400.0
    assert apps[0]["task"] == "novel" and apps[0]["classes"][0] == "dog"
    cfg = srv.get("/v1/config").json()
    assert cfg["policy"] == "otas" and cfg["profile"]["model"] == "tiny_test"


def test_infer_bytes_uint8_fp32(srv):
    r = srv.post("/v2/models/tiny_test/infer", json={**infer_body("lowlight", 3), "id": "abc"})
    assert r.status_code == 200, r.text
    body = r.json()
    out = {o["name"]: o for o in body["outputs"]}
    assert body["id"] == "abc" and out["probs"]["shape"] == [3, 5] and len(out["probs"]["data"]) == 15
    assert all(lab in ("airplane", "automobile", "bird", "cat", "deer") for lab in out["label"]["data"])
    assert out["gamma"]["data"][0] in (-4, 0, 4) and out["deadline_met"]["data"] == [True] * 3
    img = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3))
    for dt, data in (("UINT8", img.ravel().tolist()), ("FP32", (img / 255).ravel().tolist())):
        inp = {"name": "image", "datatype": dt, "shape": [2, SIZE, SIZE, 3], "data": data}
        r = srv.post("/v2/models/tiny_test/infer", json={"parameters": {"app": "blur"}, "inputs": [inp]})
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["shape"] == [2, 5]


def test_versioned_paths_and_stats(srv):
    r = srv.post("/v2/models/tiny_test/versions/1/infer", json=infer_body("blur", 2))
    assert r.status_code == 200 and r.json()["outputs"][1]["shape"] == [2]
    assert srv.get("/v2/models/tiny_test/versions/1").json()["name"] == "tiny_test"
    assert srv.get("/v2/models/tiny_test/versions/1/ready").json()["ready"] is True
    stats = srv.get("/v2/models/tiny_test/stats").json()["model_stats"][0]
    assert stats["inference_count"] >= 2 and stats["execution_count"] >= 1
    assert stats["inference_stats"]["success"]["count"] == stats["inference_count"]


def test_classify_multipart_json_raw(srv):
    r = srv.post("/v1/apps/novel/classify", files={"image": ("x.png", png(1), "image/png")}, data={"top_k": "2"})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["label"] == b["top_k"][0]["label"] and len(b["top_k"]) == 2 and b["deadline_met"] is True
    assert b["total_ms"] >= b["exec_ms"] > 0 and b["gamma"] in (-4, 0, 4) and b["slo_ms"] == 400.0
    r = srv.post("/v1/apps/blur/classify", json={"image": b64png(2), "top_k": 5})
    assert r.status_code == 200 and len(r.json()["top_k"]) == 5
    r = srv.post("/v1/apps/blur/classify", content=png(3), headers={"content-type": "image/png"})
    assert r.status_code == 200 and len(r.json()["top_k"]) == 3


def test_metrics(srv):
    srv.post("/v1/apps/novel/classify", json={"image": b64png(2)})
    text = srv.get("/metrics").text
    for name in ("otas_requests_total{", "otas_request_latency_seconds_bucket", "otas_slo_attainment{",
                 "otas_utility_total{", "otas_batches_total{gamma=", "otas_batch_size_bucket", "otas_queue_depth",
                 "otas_batch_predicted_seconds_bucket", "otas_batch_measured_seconds_bucket"):  # fmt: skip
        assert name in text, name
    assert 'otas_requests_total{app="novel",outcome="served",reason=""}' in text


INFER, CLASSIFY = "/v2/models/tiny_test/infer", "/v1/apps/novel/classify"


def _tensor(dt: str, shape: list, data: list) -> dict:
    return {
        "json": {
            "parameters": {"app": "novel"},
            "inputs": [{"name": "image", "datatype": dt, "shape": shape, "data": data}],
        }
    }


def _b64(data: bytes) -> dict:
    return {"json": {"image": base64.b64encode(data).decode()}}


def _raw(data: bytes, ctype: str = "image/png") -> dict:
    return {"content": data, "headers": {"content-type": ctype}}


FULL = SIZE * SIZE * 3
_PART = b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
BAD = [
    # (what, (path, post kwargs or None for GET), status, reason)
    ("unknown model", ("/v2/models/nope/infer", {"json": infer_body()}), 404, "unknown_model"),
    ("unknown model meta", ("/v2/models/nope", None), 404, "unknown_model"),
    ("unknown app (infer)", (INFER, {"json": infer_body("nope")}), 400, "unknown_app"),
    ("unknown app (classify)", ("/v1/apps/nope/classify", _b64(png())), 404, "unknown_app"),
    ("missing app", (INFER, {"json": {"inputs": infer_body()["inputs"]}}), 400, "missing_app"),
    ("malformed json", (INFER, _raw(b'{"inputs": [', "application/json")), 400, "bad_json"),
    ("not base64", (CLASSIFY, {"json": {"image": "!!notbase64!!"}}), 400, "bad_payload"),
    ("non-image", (CLASSIFY, _b64(b"hello world")), 400, "not_an_image"),
    ("truncated image", (CLASSIFY, _b64(png(0, 64)[:120])), 400, "not_an_image"),
    ("empty image", (CLASSIFY, _raw(b"")), 400, "not_an_image"),
    ("oversized body", (CLASSIFY, _raw(b"x" * 100_000)), 413, "too_large"),
    ("wrong shape", (INFER, _tensor("UINT8", [1, 8, 8, 3], [0] * 192)), 400, "bad_shape"),
    ("shape/data mismatch", (INFER, _tensor("UINT8", [1, SIZE, SIZE, 3], [0] * 10)), 400, "bad_shape"),
    ("bytes shape mismatch", (INFER, _tensor("BYTES", [2], [b64png()])), 400, "bad_shape"),
    ("out of range", (INFER, _tensor("FP32", [1, SIZE, SIZE, 3], [2.0] * FULL)), 400, "bad_payload"),
    ("bad datatype", (INFER, _tensor("INT64", [1], [1])), 400, "bad_datatype"),
    ("bad top_k", (CLASSIFY + "?top_k=zero", _b64(png())), 400, "bad_top_k"),
    ("no file field", (CLASSIFY, {"files": {"other": ("x.png", png(), "image/png")}}), 400, "missing_image"),
    ("multipart cut short", (CLASSIFY, _raw(_PART + png(), "multipart/form-data; boundary=XyZ")), 400, "bad_multipart"),
    ("multipart, no boundary", (CLASSIFY, _raw(_PART + png(), "multipart/form-data")), 400, "bad_multipart"),
    ("multipart, empty", (CLASSIFY, _raw(b"", "multipart/form-data; boundary=XyZ")), 400, "bad_multipart"),
    ("multipart, quoted boundary, no image", (CLASSIFY, _raw(b'--X;y\r\nContent-Disposition: form-data; name="a"\r\n'
     b"\r\n1\r\n--X;y--\r\n", 'multipart/form-data; Boundary="X;y"')), 400, "missing_image"),
    ("unsupported media", (CLASSIFY, _raw(b"abc", "text/plain")), 415, "unsupported_media_type"),
    ("unknown input", (INFER, {"json": {**infer_body(), "inputs": [{**infer_body()["inputs"][0], "name": "x"}]}}),
     400, "unknown_input"),
    ("json data not a list", (INFER, _tensor("BYTES", [1], b64png())), 400, "bad_payload"),
    ("no data", (INFER, {"json": {**infer_body(), "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}}),
     400, "bad_payload"),
    ("unknown version", ("/v2/models/tiny_test/versions/2/infer", {"json": infer_body()}), 404, "unknown_version"),
    # Protocol clients parse every error body as JSON: Starlette's own 404/405 included
    ("unknown path", ("/v2/nothing/here", None), 404, "not_found"),
    ("unknown path (POST)", ("/nothing", {"json": {}}), 404, "not_found"),
    ("wrong method", (INFER, None), 405, "method_not_allowed"),
    ("wrong method (POST)", ("/v2/health/live", {"json": {}}), 405, "method_not_allowed"),
    ("model config", ("/v2/models/tiny_test/config", None), 404, "not_supported"),
    ("model config, unknown model", ("/v2/models/nope/config", None), 404, "unknown_model"),
]  # fmt: skip


@pytest.mark.parametrize("what,call,status,reason", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_4xx_with_reason(srv, what, call, status, reason):
    path, kw = call
    r = srv.get(path) if kw is None else srv.post(path, **kw)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["reason"] == reason and len(body["error"]) > 15, body


def test_streamed_oversized_body_is_413(srv):
    def chunks():
        for _ in range(20):
            yield b"y" * 8192

    r = srv.post("/v1/apps/novel/classify", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and r.json()["reason"] == "too_large"
    assert srv.get("/v2/health/live").status_code == 200
