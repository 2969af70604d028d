"""The one thread that owns the device. It takes batches in order and settles each batch's future with when the
device took it up, when it was done (engine clock, ms), its result, and when the thread began it (ran it, or
launched it behind the running one), or with the runner's error.

One batch at a time, a batch is run (`Runner.run`) and settled. A runner that launches ahead (`Runner.launch`:
CUDA graphs with host I/O) has each batch staged and queued on the device behind the running one, and the same
thread sees each through to its answer: it sleeps on its job queue, so a batch handed over meanwhile is launched
at once, looking every `LOOK_MS` at whether the running batch is done, until shortly before its expected end
(`EARLY_MS`; the scheduler's prediction, from when the batch before it was read); then it waits for the batch on
the device and reads it. No second thread takes the GIL per batch: on a host-bound server that hand-over cost
more than launching ahead hid (run 42, bench/results/pipeline/h100_run42/).

`now_ms` must be a real clock (the engine's): the thread sleeps against it."""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("otas.engine")

EARLY_MS = 0.2
"""A launched batch is waited for (the thread blocked on the device, the GIL released) from this long before its
expected end unless a batch is queued to launch behind it: a thread woken from a timed sleep takes tens of µs and
the GIL more, so waking at the end itself would make every answer that much later (a batch of one on an H100 takes
0.45 ms). A batch handed over after that is launched once the running one is read."""
LOOK_MS = 1.0
"""Longest sleep between two looks at whether a launched batch is done: an answer that comes earlier than expected
waits at most about this long."""


@dataclass(eq=False)
class _Job:
    fut: Future
    images: Sequence[np.ndarray]
    tasks: Sequence[str]
    gamma: int
    device_ms: float
    """What the device is predicted to spend on it."""


@dataclass(eq=False)
class _Flight:
    """A launched batch, not yet read."""

    job: _Job
    handle: Any
    """`Runner.launch`'s: `ready()` never blocks; calling it (once) waits and gives the `RunResult`."""
    end_ms: float
    """When the device is expected to be done with it."""
    launched_ms: float
    """When this thread launched it (engine clock, ms)."""


class Device:
    """The device thread, started at the first batch; `submit` from one thread at a time, `shutdown` once (a
    batch submitted after it raises)."""

    def __init__(self, runner: Any, now_ms: Callable[[], float]):
        self._runner, self._now_ms = runner, now_ms
        self.pipelined = bool(getattr(runner, "pipelined", False))
        self._slots = int(getattr(runner, "slots", 2))  # batches the runner holds on the device at once
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()

    def submit(self, images: Sequence[np.ndarray], tasks: Sequence[str], gamma: int, device_ms: float) -> Future:
        """A batch behind those submitted before: its future gets (taken up, done, `RunResult`, begun) or the
        runner's error. Cancelled before the thread takes it up, it never runs; after, it runs and its result is
        dropped."""
        fut: Future = Future()
        with self._lock:  # (against the thread failing meanwhile: a job put after its drain would never end)
            if self._closed:
                raise RuntimeError("the device thread is shut down (or failed): no batch can run")
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="otas-device", daemon=True)
                self._thread.start()
            self._jobs.put(_Job(fut, images, tasks, gamma, device_ms))
        return fut

    def shutdown(self) -> None:
        """Run what is queued (less what was cancelled), read every launched batch, then end the thread."""
        with self._lock:
            self._closed = True
            if self._thread is not None:
                self._jobs.put(None)
        if self._thread is not None:
            self._thread.join()

    # -- on the device thread -------------------------------------------------------------------------
    def _main(self) -> None:
        flights: deque[_Flight] = deque()  # launched, oldest first
        try:
            self._serve(flights)
        except BaseException as e:  # a bug of this thread's own: fail what it holds rather than leave it pending
            with self._lock:  # (no batch is queued after this)
                self._closed = True
            for f in flights:
                _settle(f.job.fut, error=e)
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None and job.fut.set_running_or_notify_cancel():
                    _settle(job.fut, error=e)
            log.exception("the device thread failed; its batches failed with it", extra={"event": "device_failed"})
            for f in flights:  # then their slots freed, best effort (each waits for its batch)
                try:
                    f.handle()
                except BaseException:  # noqa: BLE001, S110
                    pass

    def _serve(self, flights: deque[_Flight]) -> None:
        while True:
            if len(flights) >= self._slots:  # no launch before the oldest is read: wait for it
                self._read(flights)
                continue
            if flights:  # a new batch, looking now and then whether the running one is done, until near its end
                wait_ms = flights[0].end_ms - EARLY_MS - self._now_ms()
                try:
                    job = self._jobs.get(True, min(wait_ms, LOOK_MS) / 1e3) if wait_ms > 0 else self._jobs.get_nowait()
                except queue.Empty:
                    if wait_ms <= 0 or self._ready(flights[0]):
                        self._read(flights)
                    continue
            else:
                job = self._jobs.get()
            if job is None:
                while flights:
                    self._read(flights)
                return
            if job.fut.set_running_or_notify_cancel():  # (cancelled before it was taken up: never run)
                if self.pipelined:
                    while flights and self._ready(flights[0]):  # done while this thread slept: read first, so
                        self._read(flights)  # the new batch is not counted as launched behind it (the host's gap)
                    self._launch(job, flights)
                else:
                    self._run(job)
            while flights and self._ready(flights[0]):  # (done already: read it before the next wait)
                self._read(flights)

    def _run(self, job: _Job) -> None:
        try:
            t0 = self._now_ms()
            out = self._runner.run(job.images, job.tasks, job.gamma)
            _settle(job.fut, (t0, self._now_ms(), out, t0))
        except BaseException as e:  # noqa: BLE001 (the batch's failure is its requests' answer)
            _settle(job.fut, error=e)

    def _launch(self, job: _Job, flights: deque[_Flight]) -> None:
        captures = getattr(self._runner, "captures", None)
        try:
            if flights and captures is not None and captures(job.gamma, len(job.images)):
                while flights:  # a launch that captures graphs waits on slots only this thread frees
                    self._read(flights)
            now = self._now_ms()
            handle = self._runner.launch(job.images, job.tasks, job.gamma)
            start = max(self._now_ms(), flights[-1].end_ms) if flights else self._now_ms()
            flights.append(_Flight(job, handle, start + job.device_ms, now))
        except BaseException as e:  # noqa: BLE001
            _settle(job.fut, error=e)

    @staticmethod
    def _ready(f: _Flight) -> bool:
        try:
            return bool(f.handle.ready())
        except BaseException:  # noqa: BLE001 (read it: the wait raises the same, and frees its slot)
            return True

    def _read(self, flights: deque[_Flight]) -> None:
        """Wait for the oldest launched batch and settle it; the next then runs from now on the device (its
        expected end moved with it: a batch that ran long would otherwise leave the next one's end past)."""
        f = flights.popleft()
        try:
            out = f.handle()
            done = self._now_ms()
            _settle(f.job.fut, (done - out.ms, done, out, f.launched_ms))
        except BaseException as e:  # noqa: BLE001
            done = self._now_ms()
            _settle(f.job.fut, error=e)
        if flights:
            flights[0].end_ms = done + flights[0].job.device_ms


def _settle(fut: Future, value: Any = None, error: BaseException | None = None) -> None:
    """Settle a running future once (a second settling of one batch is a bug, not an answer)."""
    if not fut.done():
        fut.set_exception(error) if error is not None else fut.set_result(value)
