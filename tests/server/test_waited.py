"""A client's stated wait (`otas-waited-ms`): its request is timed from when it was first queued
upstream, over HTTP and gRPC; a bad value is a clear 400, never a silent deadline."""

import grpc
import httpx
import pytest

from otas.server.errors import ProtocolError
from otas.server.grpc_api import grpc_predict_v2_pb2 as pb
from otas.server.grpc_api import grpc_predict_v2_pb2_grpc as pb_grpc
from otas.server.waited import MAX_WAITED_MS, WAITED, waited_ms
from tests.server.helpers import paced_profile, png, serving

CLASSIFY = "/v1/apps/novel/classify"  # SLO 400 ms; a batch of one takes 60 ms at γ=0, 36 at the fastest


@pytest.mark.parametrize(
    "values,ms", [([], 0.0), (["0"], 0.0), ([" 12.5 "], 12.5), (["3e2"], 300.0), (["7."], 7.0), ([".5"], 0.5)]
)
def test_stated_wait_is_read(values, ms):
    assert waited_ms(values) == ms


@pytest.mark.parametrize(
    "values",
    [["-1"], ["nan"], ["inf"], ["abc"], [""], ["1", "2"], [str(MAX_WAITED_MS * 2)], ["1" * 40], ["١٢"], ["1_0"]]
    + [["0x1"], ["1e"], ["."]],
)
def test_bad_stated_wait_is_a_clear_400(values):
    with pytest.raises(ProtocolError) as e:
        waited_ms(values)
    assert e.value.status == 400 and e.value.reason == "bad_waited" and WAITED in e.value.message


def test_http_request_is_timed_from_its_stated_wait(paced):
    with serving(paced, paced_profile()) as (srv, _):
        plain = httpx.post(srv.url + CLASSIFY, content=png(0), headers={"content-type": "image/png"}, timeout=30)
        told = httpx.post(
            srv.url + CLASSIFY, content=png(1), headers={"content-type": "image/png", WAITED: "200"}, timeout=30
        )
        assert plain.status_code == told.status_code == 200, (plain.text, told.text)
        assert plain.json()["total_ms"] < 200 <= told.json()["total_ms"] < 200 + 2 * plain.json()["total_ms"] + 50
        # 380 of its 400 ms are gone: less than the fastest batch of one needs, refused at once
        late = httpx.post(
            srv.url + CLASSIFY, content=png(2), headers={"content-type": "image/png", WAITED: "380"}, timeout=30
        )
        assert late.status_code == 503 and late.json()["reason"] == "infeasible", late.text
        assert "wait its client stated" in late.json()["error"]
        bad = httpx.post(
            srv.url + CLASSIFY, content=png(3), headers={"content-type": "image/png", WAITED: "soon"}, timeout=30
        )
        assert bad.status_code == 400 and bad.json()["reason"] == "bad_waited", bad.text
        assert paced.sizes == [1, 1]  # the refused and the bad request cost no device time


def test_a_request_past_its_own_deadline_is_refused_behind_a_recent_one(paced):
    """An application's requests queue in arrival order, so one that waited upstream is planned no
    earlier than the last one queued; it is still admitted by its own deadline: stating a wait far
    past its SLO right after an ordinary request is a 503 infeasible, not an answer known to be late."""
    with serving(paced, paced_profile()) as (srv, _):
        plain = httpx.post(srv.url + CLASSIFY, content=png(0), headers={"content-type": "image/png"}, timeout=30)
        assert plain.status_code == 200, plain.text
        late = httpx.post(
            srv.url + CLASSIFY, content=png(1), headers={"content-type": "image/png", WAITED: "10000"}, timeout=30
        )
        assert late.status_code == 503 and late.json()["reason"] == "infeasible", late.text
        assert "its deadline passed" in late.json()["error"] and "-" not in late.json()["error"].split("passed")[1][:6]
        assert paced.sizes == [1]


def _infer(stub, metadata):
    data = pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])
    data.contents.bytes_contents.append(png(0))
    req = pb.ModelInferRequest(model_name="tiny_test", inputs=[data])
    req.parameters["app"].string_param = "novel"
    return stub.ModelInfer(req, metadata=metadata, timeout=30)


def test_grpc_request_is_timed_from_its_stated_wait(paced):
    with serving(paced, paced_profile(), grpc=True) as (srv, _), grpc.insecure_channel(srv.grpc_target) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        assert _infer(stub, ((WAITED, "100"),)).outputs
        with pytest.raises(grpc.RpcError) as late:
            _infer(stub, ((WAITED, "390"),))
        assert late.value.code() == grpc.StatusCode.UNAVAILABLE and "infeasible" in late.value.details()
        with pytest.raises(grpc.RpcError) as bad:
            _infer(stub, ((WAITED, "-5"),))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bad_waited" in bad.value.details()
        assert paced.sizes == [1]
