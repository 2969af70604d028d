"""gRPC under hostile strings and at shutdown: an error quoting a client's long string stays a
readable status (clients drop details over 16 KiB), readiness fails while the server drains, as
over HTTP, bytes that are not protobuf are INVALID_ARGUMENT (not UNKNOWN with a logged traceback),
and infer messages count in the bytes in flight."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from otas.config import HttpConfig
from otas.server.grpc_api import grpc_predict_v2_pb2 as pb
from otas.server.grpc_api import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.server.helpers import PacedRunner, paced_profile, png, serving


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


def _garbage(seed: int) -> bytes:
    """Bytes that are not a protobuf message: random, truncated varints, lengths past the end,
    reserved wire types, a string field holding invalid UTF-8."""
    rng = np.random.default_rng(seed)
    kinds = [
        lambda: rng.integers(0, 256, int(rng.integers(1, 4000)), dtype=np.uint8).tobytes(),
        lambda: b"\x0a" + b"\xff" * int(rng.integers(1, 12)),  # a length varint that never ends
        lambda: b"\x0a" + bytes([int(rng.integers(5, 127))]) + b"ab",  # a length past the end
        lambda: bytes([(int(rng.integers(1, 15)) << 3) | int(rng.choice([6, 7]))]) + b"\x00" * 4,  # wire type 6/7
        lambda: b"\x0a\x04\xff\xfe\xfd\xfc",  # field 1 (a string in every request) of invalid UTF-8
    ]
    return kinds[seed % len(kinds)]()


@pytest.mark.parametrize("seed", range(10))
def test_messages_that_are_not_protobuf_are_invalid_argument(srv, stub, seed, caplog):
    methods = ["ModelInfer", "ModelReady", "ModelMetadata", "ServerLive", "ServerReady", "ServerMetadata"]
    payload = _garbage(seed)
    with grpc.insecure_channel(srv.grpc_target) as ch, caplog.at_level("ERROR"):
        for m in methods:
            call = ch.unary_unary(f"/inference.GRPCInferenceService/{m}")  # raw bytes, no serializer
            try:
                call(payload, timeout=10)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (m, e.code(), e.details())
                assert e.details().startswith("bad_message: ") and len(e.details()) < 2000
                assert dict(e.trailing_metadata())["otas-reason"] == "bad_message"
            # (a few random byte strings happen to parse as an empty message of some kind: then answered)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert stub.ServerLive(pb.ServerLiveRequest()).live  # the server is unharmed


def test_infer_messages_count_in_the_bytes_in_flight(runner):
    """A large gRPC infer message holds its bytes in the same budget as HTTP bodies: over
    `max_inflight_mb` it is refused UNAVAILABLE `in_flight_full` at once, and the budget returns."""
    prof = paced_profile(5, 1)
    with (
        serving(PacedRunner(runner, prof), prof, policy="fixed:0", grpc=True, max_body=1 << 20) as (srv, _),
        grpc.insecure_channel(srv.grpc_target) as ch,
    ):
        stub, guard = pb_grpc.GRPCInferenceServiceStub(ch), srv.app.state.guard
        big = pb.ModelInferRequest(model_name="tiny_test")
        big.parameters["app"].string_param = "blur"
        t = big.inputs.add(name="image", datatype="BYTES", shape=[1])
        t.contents.bytes_contents.append(
            png(1) + b"\0" * 200_000
        )  # over SMALL: counted (a PNG's trailing bytes are ignored)
        guard.inflight = guard.http.max_inflight_bytes - 100_000  # as if other requests held the rest
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(big, timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert e.value.details().startswith("in_flight_full: ")
        guard.inflight = 0
        assert stub.ModelInfer(big, timeout=30).outputs  # room again: served
        assert guard.inflight == 0


def test_connections_that_never_speak_or_go_idle_are_closed(runner):
    """As over HTTP: a gRPC connection that sends nothing is closed after the header timeout, and a
    channel with no call in progress after the keep-alive time (the client reconnects by itself)."""
    import socket
    import time

    prof = paced_profile(5, 1)
    http = HttpConfig(drain_s=0.0, header_timeout_s=1.0, keep_alive_s=1.0)
    with serving(PacedRunner(runner, prof), prof, policy="fixed:0", grpc=True, http=http) as (srv, _):
        host, port = srv.grpc_target.rsplit(":", 1)
        silent = [socket.create_connection((host, int(port)), timeout=10) for _ in range(20)]
        with grpc.insecure_channel(srv.grpc_target) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
            t0 = time.monotonic()
            for s in silent:  # the server's SETTINGS frame, then end of stream
                while s.recv(65536):
                    pass
                s.close()
            assert time.monotonic() - t0 < 8
            time.sleep(2.5)  # the channel idles past keep_alive_s: closed by the server ...
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live  # ... and reopened


def test_a_call_whose_message_does_not_come_is_cut_at_the_body_timeout(runner):
    """A gRPC call must bring its message whole within the body timeout of its start, as an HTTP body
    must: else DEADLINE_EXCEEDED `body_timeout`, and its call slot is free again. A client that declared
    messages and sent all but their last bytes once held every slot (RESOURCE_EXHAUSTED for everyone
    else) for as long as it kept its streams open, and the bytes gRPC buffered for them (1.2 GB for 80
    streams) outside the bytes-in-flight budget. A call that ends with no message is INVALID_ARGUMENT."""
    import threading
    import time

    prof = paced_profile(5, 1)
    http = HttpConfig(drain_s=0.0, body_timeout_s=1.0, max_connections=4)
    with (
        serving(PacedRunner(runner, prof), prof, policy="fixed:0", grpc=True, http=http) as (srv, _),
        grpc.insecure_channel(srv.grpc_target) as ch,
    ):
        stub, never = pb_grpc.GRPCInferenceServiceStub(ch), threading.Event()

        def silent():  # a request stream that sends nothing (not even the half-close) until released
            never.wait(30)
            return
            yield

        infer = ch.stream_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        try:
            t0 = time.monotonic()
            stalled = [infer.future(silent(), timeout=30) for _ in range(4)]
            time.sleep(0.3)
            with pytest.raises(grpc.RpcError) as e:  # every slot is held: refused at once
                stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for f in stalled:
                err = f.exception(timeout=20)
                assert err is not None and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
                assert err.details().startswith("body_timeout: ")
                assert ("otas-reason", "body_timeout") in err.trailing_metadata()
            assert time.monotonic() - t0 < 10
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live  # the slots are free again
        finally:
            never.set()
        with pytest.raises(grpc.RpcError) as e:
            infer(iter(()), timeout=10)  # half-closed with no message
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith("bad_message: ")


_FLOOD = """
import otas.server.grpc_api  # first, as `otas serve` imports it: before grpc itself
import grpc
from concurrent import futures

server = grpc.server(futures.ThreadPoolExecutor(2))
echo = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.T", {"Echo": echo})])
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
    call = ch.unary_unary("/t.T/Echo", request_serializer=lambda x: x, response_deserializer=lambda x: x)
    for n in (%s):
        try:
            call(b"", metadata=[(f"x-{i}", "a") for i in range(n)], timeout=10)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
server.stop(0)
"""


@pytest.mark.parametrize("counts", ["500, 2000", "300, 300, 300"])
def test_a_client_flooding_metadata_writes_nothing_outside_the_json_log(counts):
    """gRPC's C core writes a plain-text line to stderr for each call with oversized metadata: any
    client could fill the log with lines that are not JSON. Quiet unless GRPC_VERBOSITY is set."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    done = subprocess.run([sys.executable, "-c", _FLOOD % counts], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.strip() == "", done.stderr[-2000:]
