"""Large JSON bodies are parsed in a child process, off the event loop.

`json.loads` holds the GIL for the whole parse (an 8 MB body of numbers: about 170 ms), so a thread
would not free the event loop; a process does. Bodies up to `INLINE` bytes (about a millisecond of
parsing) are parsed in place; larger ones go to a small process pool, whose queue is bounded: when
it is full the request is refused at once (429 `parse_busy`). Only pure functions of the body run
there (`http_codec`); their results (numpy arrays, bytes) and errors (`ProtocolError`) come back
pickled. `otas serve` starts the process with the server; elsewhere (tests) it starts with the
first large body, which waits ~0.5 s for it. A pool that breaks (a child killed) is replaced, and
the request answered 500.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from otas.server import memory
from otas.server.errors import ProtocolError

log = logging.getLogger("otas.server")
INLINE = 64 << 10
"""JSON bodies up to this size are parsed on the event loop."""
T = TypeVar("T")


def _ready() -> bool:
    return True


def _init() -> None:
    # Ctrl-C reaches the terminal's whole process group: the server drains and stops this child
    # itself, and a KeyboardInterrupt traceback from it would only litter the log
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    memory.tune()
    os.nice(10)  # as the decode threads: parsing takes CPU from the model last


def _parse(fn: Callable[..., T], body: bytes, *args: Any) -> T:
    """In the child: the parse, then the freed memory of a large body back to the OS."""
    try:
        return fn(body, *args)
    finally:
        memory.trim()


class JsonParser:
    """Runs a parse function of a body inline or in a child process (see the module docstring)."""

    def __init__(self, workers: int = 1, max_pending: int | None = None):
        if workers < 0:
            raise ValueError(f"json_workers={workers}: use 0 (parse on the event loop) or a count")
        self.workers, self.max_pending = workers, max_pending or 2 * workers
        self._pool: ProcessPoolExecutor | None = None
        self._pending = 0

    def start(self) -> None:
        """Start the children now (a first large body should not wait for them)."""
        if self.workers and self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init)
            for _ in range(self.workers):
                self._pool.submit(_ready)

    async def run(self, fn: Callable[..., T], body: bytes, *args: Any, json_bytes: int | None = None) -> T:
        """fn(body, *args), in place when the JSON in it (`json_bytes`, default all of it) is small."""
        if not self.workers or (len(body) if json_bytes is None else json_bytes) <= INLINE:
            return fn(body, *args)
        if self._pending >= self.max_pending:
            raise ProtocolError(
                429, "parse_busy",
                f"{self._pending} large JSON bodies are being parsed; retry shortly, or send tensors as binary data "
                "(Inference-Header-Content-Length), which needs no parsing",
            )  # fmt: skip
        self.start()
        self._pending += 1
        try:
            return await asyncio.wrap_future(self._pool.submit(_parse, fn, body, *args))
        except BrokenProcessPool:
            log.error("JSON parser process died; starting another", extra={"event": "parser_died"})
            self._pool, pool = None, self._pool
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            self._pending -= 1

    def shutdown(self) -> None:
        """Stop the children (a parse under way finishes first); blocks, so call it off the loop."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
