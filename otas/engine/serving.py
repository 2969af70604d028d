"""What an engine serves: the contract between the HTTP app (`otas.server.app`) and any engine
behind it, the local `Engine` or the Ray router's `RoutedEngine`. No torch, no web framework.

An engine takes decoded images for named applications and answers each accepted one exactly
once: a `Served` record, or a `NotServed` error saying why not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from otas.types import App, BatchPlan

log = logging.getLogger("otas.engine")


@dataclass(frozen=True)
class Served:
    """The answer to one served request (times in ms on the engine's clock)."""

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

    def batch(self, plan: BatchPlan, measured_ms: float, runner_ms: float, queued: int) -> None: ...

    def queue_depth(self, n: int) -> None: ...


def observe(hook: Callable[..., None], *args: Any) -> None:
    """Call one observer hook. Observers are metrics and logs: one that raises is logged, and costs
    no request its answer and no engine its loop."""
    try:
        hook(*args)
    except Exception:
        log.exception("observer failed", extra={"event": "observer_failed", "hook": getattr(hook, "__name__", "")})


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

    async def decode(self, data: bytes) -> np.ndarray:
        """Encoded image -> uint8 (image_size, image_size, 3); raises `ImageError`."""
        ...

    def submit(self, app: str, image: np.ndarray, arrival_ms: float | None = None) -> asyncio.Future[Served]:
        """Queue one image for `app` (a known name); a refusal raises NotServed at once, otherwise
        the future resolves to Served or raises NotServed, exactly once, whatever happens later."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Stop admitting, finish what is accepted (bounded), and answer whatever is left."""
        ...
