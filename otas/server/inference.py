"""One validated request on the engine, for every transport (HTTP infer and classify, gRPC): the
application is checked, encoded images are decoded off the event loop, and every image is
submitted with the request's arrival time. Each submitted image is answered exactly once by the
engine; if a later image is refused, the ones already queued are answered to nobody."""

from __future__ import annotations

import asyncio

import numpy as np

from otas.engine.images import ImageError
from otas.engine.serving import Served, ServingEngine
from otas.server.errors import ProtocolError
from otas.server.protocol import InferRequest


def check_app(engine: ServingEngine, app: str, status: int = 400) -> None:
    if app not in engine.apps:
        raise ProtocolError(status, "unknown_app", f"application {app!r} is not served; known: {sorted(engine.apps)}")


async def run(engine: ServingEngine, req: InferRequest, arrival_ms: float) -> list[Served]:
    check_app(engine, req.app)
    images = req.images if req.images is not None else await decode_all(engine, req.payloads or [])
    return await serve_all(engine, req.app, images, arrival_ms)


async def decode_all(engine: ServingEngine, payloads: list[bytes]) -> list[np.ndarray]:
    try:
        return list(await asyncio.gather(*(engine.decode(p) for p in payloads)))
    except ImageError as e:
        raise ProtocolError(400, "not_an_image", str(e)) from None


async def serve_all(engine: ServingEngine, app: str, images: list[np.ndarray], arrival_ms: float) -> list[Served]:
    futures = []
    try:
        for img in images:
            futures.append(engine.submit(app, img, arrival_ms))
    except Exception:
        for f in futures:  # already queued: they will be answered; nobody waits for them
            f.add_done_callback(lambda f: f.cancelled() or f.exception())
        raise
    return list(await asyncio.gather(*futures))
