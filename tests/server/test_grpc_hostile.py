"""gRPC under hostile strings and at shutdown: an error quoting a client's long string stays a
readable status (clients drop details over 16 KiB), and readiness fails while the server drains,
as over HTTP."""

from __future__ import annotations

import grpc
import pytest

from otas.server.grpc_api import grpc_predict_v2_pb2 as pb
from otas.server.grpc_api import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.server.helpers import PacedRunner, paced_profile, serving


@pytest.fixture(scope="module")
def srv(runner):
    prof = paced_profile(5, 1)
    with serving(PacedRunner(runner, prof), prof, policy="fixed:0", grpc=True) as (s, _):
        yield s


@pytest.fixture
def stub(srv):
    with grpc.insecure_channel(srv.grpc_target) as ch:
        yield pb_grpc.GRPCInferenceServiceStub(ch)


@pytest.mark.parametrize("n", [100, 12_000, 20_000, 200_000])
def test_errors_quoting_long_client_strings_stay_readable(stub, n):
    calls = [
        lambda: stub.ModelReady(pb.ModelReadyRequest(name="x" * n)),
        lambda: stub.ModelInfer(pb.ModelInferRequest(model_name="x" * n)),
        lambda: stub.ModelInfer(pb.ModelInferRequest(model_name="tiny_test", model_version="v" * n)),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as e:
            call()
        # (a message over the receive limit is gRPC's own RESOURCE_EXHAUSTED, with its own short text)
        codes = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert e.value.code() in codes, e.value.details()
        assert len(e.value.details()) < 2000


def test_readiness_fails_while_draining(srv, stub):
    guard = srv.app.state.guard
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    guard.draining = True
    try:
        assert not stub.ServerReady(pb.ServerReadyRequest()).ready
        assert not stub.ModelReady(pb.ModelReadyRequest(name="tiny_test")).ready
        assert stub.ServerLive(pb.ServerLiveRequest()).live  # alive, not ready
    finally:
        guard.draining = False
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
