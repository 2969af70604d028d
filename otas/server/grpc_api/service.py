"""The KServe v2 gRPC API on `grpc.aio`, on the HTTP app's event loop (the app's lifespan starts
and stops it): the same engine, validation (`protocol.build_request`), limits and metrics as HTTP.

Inputs arrive as `raw_input_contents` (what tritonclient sends) or typed `contents` (BYTES:
`bytes_contents` holding encoded images; UINT8: `uint_contents`; FP32: `fp32_contents`); outputs
go back as `raw_output_contents`, as Triton does. Errors carry the HTTP path's reason code, as
`"<reason>: <message>"` and in the trailing metadata `otas-reason`: bad input INVALID_ARGUMENT
(a message that is not valid protobuf too: `bad_message`), unknown model NOT_FOUND, queue full
RESOURCE_EXHAUSTED, cannot meet the deadline, shutting down or request bytes in flight over
`max_inflight_mb` (`in_flight_full`, counted with HTTP's) UNAVAILABLE, failed batch INTERNAL, a
message not whole within the body timeout DEADLINE_EXCEEDED (`body_timeout`). A call the client
cancels, or whose deadline passes, takes its images out of the engine's queue.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from otas.engine.serving import NotServed, ServingEngine
from otas.server.admission import OVERLOADED_MESSAGE, FrontDoor, Ticket
from otas.server.errors import ProtocolError, clip
from otas.server.grpc_api import grpc_predict_v2_pb2 as pb
from otas.server.grpc_api import grpc_predict_v2_pb2_grpc as pb_grpc
from otas.server.inference import delivered, run
from otas.server.protocol import (
    GRPC_EXTENSIONS,
    SERVER_NAME,
    InputTensor,
    build_request,
    check_model,
    infer_outputs,
    model_metadata,
    server_version,
)
from otas.server.tensors import to_raw
from otas.server.waited import WAITED, waited_ms

if TYPE_CHECKING:
    from otas.server.app import ServeConfig
    from otas.server.guard import Guard

log = logging.getLogger("otas.server")
Code = grpc.StatusCode
REFUSED = {"queue_full": Code.RESOURCE_EXHAUSTED, "decode_busy": Code.RESOURCE_EXHAUSTED,
           "infeasible": Code.UNAVAILABLE, "deadline_unreachable": Code.UNAVAILABLE,
           "shutting_down": Code.UNAVAILABLE, "unknown_app": Code.NOT_FOUND,
           "overloaded": Code.UNAVAILABLE, "in_flight_full": Code.UNAVAILABLE}  # fmt: skip
CONTENTS = {"BYTES": "bytes_contents", "UINT8": "uint_contents", "FP32": "fp32_contents"}


def status_of(e: Exception) -> tuple[grpc.StatusCode, str, str]:
    """(code, reason, message) of a failed call, as HTTP would answer it (`handlers.error_response`)."""
    if isinstance(e, ProtocolError):
        return (Code.NOT_FOUND if e.status == 404 else Code.INVALID_ARGUMENT), e.reason, e.message
    if isinstance(e, NotServed):
        code = Code.INTERNAL if e.outcome == "error" and e.reason != "shutting_down" else Code.UNAVAILABLE
        return REFUSED.get(e.reason, code), e.reason, f"{e.outcome}: {e.detail}"
    return Code.INTERNAL, "internal", "internal server error; see the server log"


class BadMessage:
    """A request message that is not the protobuf it should be: the handler answers it
    INVALID_ARGUMENT `bad_message` (gRPC itself would answer UNKNOWN and log a traceback)."""

    def __init__(self, kind: str, size: int, error: Exception):
        self.kind, self.size, self.error = kind, size, error

    def refusal(self) -> ProtocolError:
        why = f"{type(self.error).__name__}: {self.error}"
        return ProtocolError(400, "bad_message", f"the {self.size}-byte message is not a valid {self.kind} ({why})")


def lenient(cls):
    """The request deserializer of `cls`: a message that does not parse becomes a `BadMessage`."""

    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except Exception as e:  # noqa: BLE001 - DecodeError, RecursionError (deep nesting), and kin
            return BadMessage(cls.DESCRIPTOR.full_name, len(data), e)

    return parse


def guarded(fn):
    @functools.wraps(fn)
    async def method(self, request, context: grpc.aio.ServicerContext):
        try:
            if isinstance(request, BadMessage):
                raise request.refusal()
            return await fn(self, request, context)
        except Exception as e:
            if not isinstance(e, ProtocolError | NotServed):
                log.exception("unhandled error", extra={"event": "internal_error", "rpc": fn.__name__})
            code, reason, message = status_of(e)
        await _abort(context, code, reason, message)

    return method


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: str, message: str) -> None:
    """End a call with `code`, its reason in the trailing metadata and first in the status message."""
    context.set_trailing_metadata((("otas-reason", reason),))
    await context.abort(code, f"{reason}: {clip(message)}")


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        engine: ServingEngine,
        config: ServeConfig,
        door: FrontDoor | None = None,
        draining: Callable[[], bool] = lambda: False,
        guard: Guard | None = None,
    ):
        """`door`: the HTTP server's front door (`admission.py`), shared: one host, one budget.
        `draining`: whether the server is shutting down (readiness then fails, as over HTTP).
        `guard`: the HTTP server's count of request bytes held (`guard.py`): an infer message holds
        its bytes there until answered, and one that would pass `max_inflight_mb` is refused."""
        self.engine, self.config, self.door, self.draining, self.guard = engine, config, door, draining, guard

    def _ready(self) -> bool:
        return self.engine.ready and not self.draining()

    @guarded
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @guarded
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._ready())

    @guarded
    async def ModelReady(self, request, context):
        check_model(request.name, request.version, self.config.model_name)
        return pb.ModelReadyResponse(ready=self._ready())

    @guarded
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=GRPC_EXTENSIONS)

    @guarded
    async def ModelMetadata(self, request, context):
        check_model(request.name, request.version, self.config.model_name)
        kmax = max((len(c) for c in self.engine.classes.values()), default=0)
        return pb.ModelMetadataResponse(**model_metadata(request.name, self.engine.image_size, kmax))

    @guarded
    async def ModelInfer(self, request, context):
        stated = [v for k, v in context.invocation_metadata() or () if k == WAITED]
        arrival = self.engine.now_ms() - waited_ms([v if isinstance(v, str) else "" for v in stated])
        size = request.ByteSize()
        if self.guard is not None and not self.guard.reserve(size):
            limit = self.guard.http.max_inflight_bytes
            raise NotServed(
                "rejected", "in_flight_full",
                f"requests being handled hold {self.guard.inflight} bytes and this one brings {size}; the limit "
                f"is {limit}; retry shortly",
            )  # fmt: skip
        ticket = None
        try:
            if self.door is not None:  # the message is whole when the handler runs: admitted and started at once
                if not self.door.admit():
                    raise NotServed("rejected", "overloaded", OVERLOADED_MESSAGE)
                ticket = Ticket(self.door)
                ticket.start()
            return await self._infer(request, context, arrival, ticket, size)
        finally:
            if ticket is not None:
                ticket.release()
            if self.guard is not None:
                self.guard.release(size)

    async def _infer(self, request, context, arrival: float, ticket: Ticket | None, size: int):
        _cancel_with(context)
        check_model(request.model_name, request.model_version, self.config.model_name)
        limit = self.config.max_body_bytes
        if size > limit:
            raise ProtocolError(413, "too_large", f"request of {size} bytes is over the limit of {limit}; send less")
        params = {k: _param(v) for k, v in request.parameters.items()}
        names = [o.name for o in request.outputs] or None
        asked = [o for o in request.outputs if "classification" in o.parameters]
        classes = {o.name: _param(o.parameters["classification"]) for o in asked}
        req = build_request(request.id or None, params, _inputs(request), self.engine.image_size, names, classes)
        results = await run(self.engine, req, arrival, ticket.release if ticket is not None else None)
        resp = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        resp.parameters["app"].string_param = req.app
        for o in infer_outputs(results, req.outputs, req.classification):
            resp.outputs.add(name=o.name, datatype=o.datatype, shape=o.shape)
            resp.raw_output_contents.append(to_raw(o.datatype, o.data))
        delivered(self.engine, arrival, results)
        return resp


def _param(p: pb.InferParameter) -> object:
    """A parameter's value, whichever field holds it."""
    return getattr(p, p.WhichOneof("parameter_choice") or "string_param")


def add_service(servicer: InferenceService, server: grpc.aio.Server) -> None:
    """Register every method of the KServe v2 service (all unary), as the generated
    `add_GRPCInferenceServiceServicer_to_server` does, but with `lenient` request parsing, and each
    call's message due whole within the body timeout of the call's start (`whole_message`)."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    timeout_s = servicer.config.http.body_timeout_s
    handlers = {
        m.name: grpc.stream_unary_rpc_method_handler(
            whole_message(getattr(servicer, m.name), timeout_s),
            request_deserializer=lenient(getattr(pb, m.input_type.name)),
            response_serializer=getattr(pb, m.output_type.name).SerializeToString,
        )
        for m in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def whole_message(behavior, timeout_s: float):
    """A unary method's `behavior(request, context)` as a handler that runs as its call starts and
    reads the one request message, which must arrive whole within `timeout_s` (else
    DEADLINE_EXCEEDED `body_timeout`, the call reset and its buffered bytes freed). Registered
    unary, a handler runs only once its message is whole, however long that takes: a client
    declaring a message and sending all but its last byte held a call slot (of
    `--max-connections`) and the bytes gRPC buffered for as long as it kept the stream open.
    Clients call the method as unary: one message, then the half-close (the wire is the same)."""

    async def handler(request_iterator, context: grpc.aio.ServicerContext):
        try:
            request = await asyncio.wait_for(context.read(), timeout_s)
        except TimeoutError:
            reason, code = "body_timeout", Code.DEADLINE_EXCEEDED
            message = (
                f"the request message did not arrive whole within {timeout_s:g} s of the call's start; send it promptly"
            )
        else:
            if request is not grpc.aio.EOF:
                return await behavior(request, context)
            reason, code, message = "bad_message", Code.INVALID_ARGUMENT, "the call ended without a request message"
        await _abort(context, code, reason, message)

    return handler


def _cancel_with(context: grpc.aio.ServicerContext) -> None:
    """A call the client cancels (or whose deadline passes) cancels its handler, whose images then
    leave the engine's queue; grpc.aio does this itself, and this makes sure of it."""
    task = asyncio.current_task()
    context.add_done_callback(lambda c: c.cancelled() and task is not None and not task.done() and task.cancel())


def _inputs(request: Any) -> list[InputTensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(
            400, "bad_payload", f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one per input, in order",
        )  # fmt: skip
    out = []
    for i, t in enumerate(request.inputs):
        if raw and t.HasField("contents"):
            raise ProtocolError(400, "bad_payload", f"input {t.name!r} has both contents and raw_input_contents")
        field, data = CONTENTS.get(t.datatype), None
        if t.HasField("contents") and field:
            data = getattr(t.contents, field)
            if not data and t.contents.ByteSize():
                raise ProtocolError(
                    400, "bad_payload", f"input {t.name!r} is {t.datatype}: send its elements in contents.{field}"
                )
        out.append(InputTensor(t.name, t.datatype, list(t.shape), data, raw[i] if raw else None))
    return out


async def start_grpc(
    engine: ServingEngine,
    config: ServeConfig,
    door: FrontDoor | None = None,
    draining: Callable[[], bool] = lambda: False,
    guard: Guard | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A started gRPC server on (config.grpc_host, config.grpc_port); returns it and the bound port.
    `door`, `draining`, `guard`: shared with HTTP, as `InferenceService` says (None: none)."""
    options = [
        # Messages up to twice the body limit reach ModelInfer, which refuses those over it with
        # INVALID_ARGUMENT `too_large`; larger ones are gRPC's own RESOURCE_EXHAUSTED.
        ("grpc.max_receive_message_length", min(2 * config.max_body_bytes, 2**31 - 1)),
        ("grpc.so_reuseport", 0),  # a port in use is an error, not a second server sharing it
        # as over HTTP: a connection that has not said hello within the header timeout is closed,
        # and so is one with no call in progress for the keep-alive time (clients reconnect)
        ("grpc.server_handshake_timeout_ms", int(config.http.header_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", int(config.http.keep_alive_s * 1000)),
    ]
    # Calls in progress are capped like HTTP connections (RESOURCE_EXHAUSTED beyond).
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=config.http.max_connections)
    add_service(InferenceService(engine, config, door, draining, guard), server)
    address = f"{config.grpc_host}:{config.grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise RuntimeError(f"gRPC cannot listen on {address} ({e}); choose another --grpc-port, or 0 for none") from e
    await server.start()
    return server, port
