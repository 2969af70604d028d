"""What an engine serves: the contract between the HTTP app (`otas.server.app`) and any engine
behind it, the local `Engine` or the Ray router's `RoutedEngine`. No torch, no web framework.

An engine takes decoded images for named applications and answers each accepted one exactly
once: a `Served` record, or a `NotServed` error saying why not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from otas.types import App, BatchPlan

log = logging.getLogger("otas.engine")


@dataclass(slots=True)
class Served:
    """The answer to one served request (times in ms on the engine's clock). Made once per image on
    the event loop, so a plain slotted record (a frozen one costs 4× as much to make); treat it as
    read-only."""

    id: int
    app: str
    gamma: int
    probs: np.ndarray
    """(K,) probabilities over `classes`."""
    classes: list[str]
    queue_ms: float
    """Arrival (the HTTP request's receipt, decoding included) to batch start."""
    exec_ms: float
    total_ms: float
    deadline_met: bool
    batch_size: int
    utility: float
    """Expected utility earned: u_a · acc(task, γ) from the profile if on time, else 0."""


class NotServed(Exception):
    """A request that gets no result: `outcome` is rejected, expired or error; `reason` a code."""

    def __init__(self, outcome: str, reason: str, detail: str):
        super().__init__(f"{outcome} ({reason}): {detail}")
        self.outcome, self.reason, self.detail = outcome, reason, detail


class Observer:
    """Hooks for metrics and logs; the server's Prometheus observer overrides them."""

    def ended(self, app: str, outcome: str, reason: str = "", served: Served | None = None) -> None: ...

    def served_many(self, app: str, served: Sequence[Served]) -> None:
        """The images of one request, all served: `ended(app, "served", "", s)` for each, unless an
        observer counts them at once (the server's metrics do)."""
        for s in served:
            observe(self.ended, app, "served", "", s)

    def ended_many(self, app: str, outcome: str, reason: str, n: int) -> None:
        """The `n` images of one request, none served: `ended(app, outcome, reason)` for each, unless an
        observer counts them at once (the server's metrics do)."""
        for _ in range(n):
            observe(self.ended, app, outcome, reason)

    def batch(self, plan: BatchPlan, measured_ms: float, runner_ms: float, queued: int) -> None: ...

    def queue_depth(self, n: int) -> None: ...

    def decided(self, ms: float, planned: bool) -> None:
        """The scheduler took `ms` of the event loop to decide (`planned`: a batch; else nothing yet)."""


def observe(hook: Callable[..., None], *args: Any) -> None:
    """Call one observer hook. Observers are metrics and logs: one that raises is logged, and costs
    no request its answer and no engine its loop."""
    try:
        hook(*args)
    except Exception:
        log.exception("observer failed", extra={"event": "observer_failed", "hook": getattr(hook, "__name__", "")})


def gather_all(futures: Sequence[asyncio.Future]) -> asyncio.Future[list]:
    """One future for several: all their results, or the first failure (the others then cancelled);
    cancelling it cancels them all. (`asyncio.gather` leaves the others running on a failure.)"""
    out = asyncio.get_running_loop().create_future()
    left = [len(futures)]

    def done(f: asyncio.Future) -> None:
        error = None if f.cancelled() else f.exception()  # read even when nobody waits any more
        if out.done():
            return
        if f.cancelled() or error is not None:
            out.cancel() if error is None else out.set_exception(error)
            for g in futures:
                g.cancel()
            return
        left[0] -= 1
        if left[0] == 0:
            out.set_result([g.result() for g in futures])

    for f in futures:
        f.add_done_callback(done)
    out.add_done_callback(lambda o: o.cancelled() and [f.cancel() for f in futures])
    return out


@runtime_checkable
class ServingEngine(Protocol):
    """Everything the HTTP app uses of an engine."""

    apps: dict[str, App]
    """The applications served, by name."""
    observer: Observer
    """Request outcomes and batch events go here; the app installs its metrics."""
    batches: int
    """Batches run so far (logged at shutdown)."""

    @property
    def image_size(self) -> int:
        """Side of the square (H = W) uint8 RGB images that `submit` takes."""
        ...

    @property
    def classes(self) -> dict[str, list[str]]:
        """Class names per task, in the order of `Served.probs`."""
        ...

    @property
    def ready(self) -> bool:
        """True while `submit` accepts requests."""
        ...

    def now_ms(self) -> float:
        """The engine's clock: `arrival_ms` and every time in `Served` are on it."""
        ...

    async def decode(
        self,
        app: str,
        payloads: Sequence[bytes],
        arrival_ms: float | None = None,
        on_large: Callable[[], None] | None = None,
    ) -> list[np.ndarray]:
        """A request's encoded images -> uint8 (image_size, image_size, 3) each, all or none; raises
        `ImageError` (a bad payload) or NotServed (a refusal: the request could not be admitted, or
        the decode queue is full). `on_large`: called once if the request has large images, as they
        enter the large-image decode lane (`otas.engine.images.Decoder`)."""
        ...

    def submit(self, app: str, image: np.ndarray, arrival_ms: float | None = None) -> asyncio.Future[Served]:
        """Queue one image for `app` (a known name); a refusal raises NotServed at once, otherwise
        the future resolves to Served or raises NotServed, exactly once, whatever happens later.
        Cancelling the future (the caller went away) takes the image out of the queue."""
        ...

    def submit_many(
        self, app: str, images: Sequence[np.ndarray], arrival_ms: float | None = None
    ) -> asyncio.Future[list[Served]]:
        """Queue one request of several images, admitted whole or refused at once (NotServed); the
        future resolves to every answer, or to the first failure (the rest are then dropped)."""
        ...

    def delivered(self, ms: float) -> None:
        """A response left the HTTP layer `ms` after its answer was ready on the engine (its last
        image's): the engine plans deadlines short by the time answers take to reach their clients
        (`otas.engine.delivery`)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Stop admitting, finish what is accepted (bounded), and answer whatever is left."""
        ...
