"""One validated request on the engine, for every transport (HTTP infer and classify, gRPC): the
application is checked, encoded images are decoded off the event loop (a request the engine could
not admit anyway is refused before decoding), and the images are submitted as one request, admitted
and answered whole. Cancelling the caller (a client that went away) takes its images out of the
decode and scheduling queues."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from otas.engine.images import ImageError
from otas.engine.serving import Served, ServingEngine
from otas.server.errors import ProtocolError
from otas.server.protocol import InferRequest


def check_app(engine: ServingEngine, app: str, status: int = 400) -> None:
    if app not in engine.apps:
        raise ProtocolError(status, "unknown_app", f"application {app!r} is not served; known: {sorted(engine.apps)}")


async def run(
    engine: ServingEngine, req: InferRequest, arrival_ms: float, handed_off: Callable[[], None] | None = None
) -> list[Served]:
    """`handed_off`: called when the request leaves the front end (its front door place is freed:
    `admission.py`): once its images are decoded, as they go to the scheduler, or earlier, as large
    images enter their own bounded decode lane. It may be called twice (it must be idempotent)."""
    check_app(engine, req.app)
    images = req.images
    if images is None:
        images = await decode_all(engine, req.app, req.payloads, arrival_ms, handed_off)
    if handed_off is not None:
        handed_off()
    return await engine.submit_many(req.app, images, arrival_ms)


def delivered(engine: ServingEngine, arrival_ms: float, results: list[Served]) -> None:
    """Tell the engine how long this response took from its answer to leaving here: the engine's
    clock now, less when its last image was answered (its arrival plus its `total_ms`)."""
    if results:
        engine.delivered(engine.now_ms() - arrival_ms - max(s.total_ms for s in results))


async def decode_all(
    engine: ServingEngine,
    app: str,
    payloads: list[bytes],
    arrival_ms: float,
    on_large: Callable[[], None] | None = None,
) -> list[np.ndarray]:
    """`on_large`: see `ServingEngine.decode` (the server passes the front door's release)."""
    try:
        return await engine.decode(app, payloads, arrival_ms, on_large)
    except ImageError as e:
        raise ProtocolError(400, "not_an_image", str(e)) from None
