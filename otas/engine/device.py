"""The one thread that owns the device. It takes batches in order and settles each batch's future with when the
device took it up, when it was done (engine clock, ms) and its result.

One batch at a time, a batch is run (`Runner.run`) and settled. A runner that launches ahead (`Runner.launch`:
CUDA graphs with host I/O) has each batch staged and queued on the device behind the running one, and the same
thread sees each through to its answer: it sleeps on its job queue until shortly before the running batch's
predicted end (`EARLY_MS`), so a batch handed over meanwhile is launched at once, then waits for the batch and
reads it. No second thread takes the GIL per batch: on a host-bound server that hand-over cost more than
launching ahead hid (run 42, bench/results/pipeline/h100_run42/)."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

EARLY_MS = 0.2
"""A launched batch is waited for (the thread blocked on the device, the GIL released) from this long before its
predicted end unless a batch is queued to launch behind it: a thread woken from a timed sleep takes tens of µs
and the GIL more, so waking at the predicted end itself would make every answer that much later (a batch of one
on an H100 takes 0.45 ms). A batch handed over after that is launched once the running one is read."""

_NONE = object()
"""No new batch came while the thread waited."""


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
    """When the device is predicted to be done with it."""


class Device:
    """The device thread, started at the first batch; `submit` from any one thread, `shutdown` once."""

    def __init__(self, runner: Any, now_ms: Callable[[], float]):
        self._runner, self._now_ms = runner, now_ms
        self.pipelined = bool(getattr(runner, "pipelined", False))
        self._slots = int(getattr(runner, "slots", 2))  # batches the runner holds on the device at once
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, images: Sequence[np.ndarray], tasks: Sequence[str], gamma: int, device_ms: float) -> Future:
        """A batch behind those submitted before: its future gets (taken up, done, `RunResult`) or the runner's
        error. Cancelled before the thread takes it up, it never runs; after, it runs and its result is dropped."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="otas-device", daemon=True)
            self._thread.start()
        fut: Future = Future()
        self._jobs.put(_Job(fut, images, tasks, gamma, device_ms))
        return fut

    def shutdown(self) -> None:
        """Run what is queued (less what was cancelled), read every launched batch, then end the thread."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()

    # -- on the device thread -------------------------------------------------------------------------
    def _main(self) -> None:
        flights: deque[_Flight] = deque()  # launched, oldest first
        while True:
            job: _Job | None | object = _NONE
            if len(flights) >= self._slots:  # no launch before the oldest is read: wait for it
                self._read(flights.popleft())
                continue
            if flights:  # a new batch until shortly before the running one's predicted end, then that one
                wait_s = (flights[0].end_ms - EARLY_MS - self._now_ms()) / 1e3
                try:
                    job = self._jobs.get(timeout=wait_s) if wait_s > 0 else self._jobs.get_nowait()
                except queue.Empty:
                    if wait_s <= 0:
                        self._read(flights.popleft())
                    continue
            else:
                job = self._jobs.get()
            if job is None:
                while flights:
                    self._read(flights.popleft())
                return
            if isinstance(job, _Job) and job.fut.set_running_or_notify_cancel():
                if self.pipelined:
                    self._launch(job, flights)
                else:
                    self._run(job)
            while flights and self._ready(flights[0]):  # (done already: read it before the next wait)
                self._read(flights.popleft())

    def _run(self, job: _Job) -> None:
        t0 = self._now_ms()
        try:
            out = self._runner.run(job.images, job.tasks, job.gamma)
        except BaseException as e:  # noqa: BLE001 (the batch's failure is its requests' answer)
            job.fut.set_exception(e)
            return
        job.fut.set_result((t0, self._now_ms(), out))

    def _launch(self, job: _Job, flights: deque[_Flight]) -> None:
        captures = getattr(self._runner, "captures", None)
        try:
            if flights and captures is not None and captures(job.gamma, len(job.images)):
                while flights:  # (or the launch would wait on slots only this thread frees)
                    self._read(flights.popleft())
            handle = self._runner.launch(job.images, job.tasks, job.gamma)
        except BaseException as e:  # noqa: BLE001
            job.fut.set_exception(e)
            return
        start = max(self._now_ms(), flights[-1].end_ms) if flights else self._now_ms()
        flights.append(_Flight(job, handle, start + job.device_ms))

    @staticmethod
    def _ready(f: _Flight) -> bool:
        try:
            return bool(f.handle.ready())
        except BaseException:  # noqa: BLE001 (read it: the wait raises the same, and frees its slot)
            return True

    def _read(self, f: _Flight) -> None:
        """Wait for a launched batch (it is done, or the last in flight) and settle it."""
        try:
            out = f.handle()
        except BaseException as e:  # noqa: BLE001
            f.job.fut.set_exception(e)
            return
        done = self._now_ms()
        f.job.fut.set_result((done - out.ms, done, out))
