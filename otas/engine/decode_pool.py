"""Image decoding in worker processes, many payloads per hand-off.

Pillow decodes a small image mostly in Python (opening, chunk parsing, conversion): for a 32×32
PNG that is ~0.2 ms under the GIL, so decode *threads* do not add up, and a host that has many
cores decodes on one. Worker processes do add up, but a hand-off costs about as much as the decode
of one small image. So payloads queue here, and each worker's dispatcher takes whatever is waiting
(up to `chunk`) as one job: one payload at a time when the host is idle, large chunks under load,
from many requests at once. Results and errors come back per payload, so a bad image fails only
its own request. No torch here: the workers import only numpy and Pillow.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from otas.data.preprocess import Preprocess
from otas.engine.images import DecodeLimits, DecodeRestarted, ImageError, decode_image

_worker: dict = {}


def _init(pre: dict, limits, nice: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the server stops this process itself, quietly
    _worker["pre"], _worker["limits"] = Preprocess.from_dict(pre), limits or DecodeLimits()
    try:
        os.nice(nice)  # a costly image takes CPU from other decoding, hardly from the model or the event loop
    except OSError:
        pass


def _decode_chunk(payloads: list[bytes]) -> list[np.ndarray | Exception]:
    out: list[np.ndarray | Exception] = []
    for data in payloads:
        try:
            out.append(decode_image(data, _worker["pre"], _worker["limits"]))
        except ImageError as e:  # the client's bad payload: its own request's 400
            out.append(e)
    return out


def _ping(hold_s: float) -> int:
    time.sleep(hold_s)  # held, so that each of the first `workers` pings needs its own process
    return os.getpid()


class ProcessDecodePool:
    """`submit(data, deadline) -> Future` of a uint8 (size, size, 3) array, decoded in `workers`
    processes. `expired(deadline)` says whether a payload's request is already out of time (checked
    just before a payload is handed off; such a payload fails with `on_expired()`)."""

    def __init__(
        self,
        pre: Preprocess,
        limits,
        workers: int,
        expired: Callable[[float | None], bool],
        on_expired: Callable[[], Exception],
        chunk: int = 64,
        nice: int = 10,
        chunk_bytes: int = 1 << 18,
        job_timeout_s: float = 30.0,
        job: Callable[[list[bytes]], list] | None = None,
    ):
        """`job_timeout_s`: a chunk not decoded by then (a decoder stuck on a crafted payload) has its
        processes killed and replaced, and its payloads fail with `DecodeRestarted`; a thread could not
        be stopped. `job`: the function a process runs on a chunk (tests)."""
        if workers < 1 or chunk < 1:
            raise ValueError(f"decode processes={workers}, chunk={chunk}: use integers >= 1")
        self._args = (pre.to_dict(), limits, nice)
        self._workers, self.chunk, self.chunk_bytes = workers, chunk, chunk_bytes
        self.job_timeout_s, self._job = job_timeout_s, job or _decode_chunk
        self._expired, self._on_expired = expired, on_expired
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._dispatch, name=f"otas-decode-dispatch-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def _new_pool(self) -> ProcessPoolExecutor:
        """A pool with every process started (spawning one takes ~0.5 s), not on the first payloads."""
        # spawn: the serving process holds threads (event loop, device, decode dispatch), so no fork
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(self._workers, mp_context=ctx, initializer=_init, initargs=self._args)
        for f in [pool.submit(_ping, 0.2) for _ in range(self._workers)]:
            f.result(timeout=120)
        return pool

    def submit(self, data: bytes, deadline: float | None) -> Future:
        f: Future = Future()
        with self._lock:  # after `shutdown` took the queue, nothing more enters it
            if not self._stopped:
                self._queue.put((f, data, deadline))
                return f
        f.set_exception(RuntimeError("the decoder is shut down"))
        return f

    def _take(self) -> list | None:
        """Block for one payload, then take what else waits, up to `chunk` payloads and `chunk_bytes`
        (a large image is slow to decode: the payloads after it in its chunk wait for it); None: stop."""
        first = self._queue.get()
        if first is None:
            return None
        items, size = [first], len(first[1])
        while len(items) < self.chunk and size < self.chunk_bytes:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)  # for this thread's next turn
                break
            items.append(nxt)
            size += len(nxt[1])
        return items

    def _dispatch(self) -> None:
        while (items := self._take()) is not None:
            live = []
            for f, data, deadline in items:
                if not f.set_running_or_notify_cancel():
                    continue  # its request failed or was abandoned
                if self._expired(deadline):
                    f.set_exception(self._on_expired())
                    continue
                live.append((f, data))
            if not live:
                continue
            with self._lock:
                pool = self._pool
            try:
                results = pool.submit(self._job, [d for _, d in live]).result(timeout=self.job_timeout_s)
            except (BrokenProcessPool, FutureTimeout) as e:
                stuck = isinstance(e, FutureTimeout)
                self._restart(pool, kill=stuck)
                why = f"took over {self.job_timeout_s:g} s" if stuck else "died"
                for f, _ in live:
                    f.set_exception(DecodeRestarted(f"an image decoder process {why} and was replaced; retry"))
                continue
            except Exception as e:  # noqa: BLE001 - e.g. a payload that could not be sent: its chunk fails
                for f, _ in live:
                    f.set_exception(e)
                continue
            for (f, _), r in zip(live, results, strict=True):
                if isinstance(r, Exception):
                    f.set_exception(r)
                else:
                    f.set_result(r)

    def _restart(self, broken: ProcessPoolExecutor, kill: bool = False) -> None:
        if kill:  # a stuck decoder: its process must go, or it holds a core for ever
            for proc in list((getattr(broken, "_processes", None) or {}).values()):
                proc.kill()
        broken.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            if self._pool is not broken or self._stopped:
                return  # another dispatcher replaced it, or the decoder stops
        fresh = self._new_pool()  # outside the lock: submit() never waits for a spawn
        with self._lock:
            if self._pool is broken and not self._stopped:
                self._pool, fresh = fresh, None
        if fresh is not None:
            fresh.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        """Stop: payloads still queued are cancelled (nobody will decode them), the processes end."""
        with self._lock:
            self._stopped = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
        with self._lock:
            pool = self._pool
        pool.shutdown(wait=True, cancel_futures=True)  # a chunk under way finishes (an image costs < 0.1 s)
        for t in self._threads:
            t.join(timeout=5)
