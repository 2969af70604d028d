"""Every transport tells the engine how long each response took from its answer to leaving the
server (`ServingEngine.delivered`): the engine plans deadlines short by it. /metrics shows it, and
the scheduler's own time per decision."""

import grpc
import httpx

from otas.server.grpc_api import grpc_predict_v2_pb2 as pb
from otas.server.grpc_api import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.server.helpers import infer_body, paced_profile, png, serving


def test_each_response_reports_its_delivery_time(paced):
    with serving(paced, paced_profile(), grpc=True) as (srv, engine):
        assert len(engine.delivery) == 0
        r = httpx.post(srv.url + "/v2/models/tiny_test/infer", json=infer_body("blur", 3), timeout=30)
        assert r.status_code == 200, r.text
        r = httpx.post(
            srv.url + "/v1/apps/novel/classify", content=png(0), headers={"content-type": "image/png"}, timeout=30
        )
        assert r.status_code == 200, r.text
        refused = httpx.post(srv.url + "/v2/models/tiny_test/infer", json=infer_body("nope", 1), timeout=30)
        assert refused.status_code == 400  # no answer: nothing delivered
        with grpc.insecure_channel(srv.grpc_target) as ch:
            data = pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])
            data.contents.bytes_contents.append(png(1))
            req = pb.ModelInferRequest(model_name="tiny_test", inputs=[data])
            req.parameters["app"].string_param = "lowlight"
            pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)
        assert len(engine.delivery) == 3  # one per response, not per image
        assert 0 <= engine.delivery.ms < 1000


def test_the_schedulers_decisions_are_timed(paced):
    with serving(paced, paced_profile()) as (srv, _):
        for app in ("blur", "novel"):
            assert httpx.post(srv.url + "/v2/models/tiny_test/infer", json=infer_body(app, 2), timeout=30).is_success
        text = httpx.get(srv.url + "/metrics").text
    counts = {ln.split("{")[1].split("}")[0]: float(ln.rsplit(" ", 1)[1])
              for ln in text.splitlines() if ln.startswith("otas_decision_seconds_count")}  # fmt: skip
    assert counts['planned="1"'] >= 2  # a decision per batch at least (and some that waited for more)
