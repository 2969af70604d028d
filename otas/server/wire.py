"""Frames between the HTTP front-end processes and the engine process (`otas serve --http-workers`).
No torch, no web framework: numpy, struct and JSON.

A frame is a fixed head, a JSON `meta` and raw bytes:

    head (17 B): size u32 (of meta + payload), kind u8, request id u64, meta size u32
    meta: UTF-8 JSON object
    payload: the rest (a request's pixels; a result's arrays; a proxied body)

Pixels travel as they are (uint8, N × H × W × 3, C order) and are read into one buffer per frame
(`FrameReader`), which the engine queues without another copy. A result's numbers travel as arrays,
not JSON: one request of hundreds of images is answered in one frame.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

log = logging.getLogger("otas.server")
HEAD = struct.Struct("<IBQI")
MAX_META = 1 << 20
"""A frame's JSON part is at most this (the largest is a proxied answer's headers, or the apps)."""


class Kind(IntEnum):
    HELLO = 1
    """engine → front end, once on connecting: image size, classes, preprocessing, apps, clock."""
    APPS = 2
    """engine → front end: the applications served now (after a change)."""
    SUBMIT = 3
    """front end → engine: one request's images (`pack_submit`)."""
    CANCEL = 4
    """front end → engine: the client of request `id` went away."""
    SERVED = 5
    """engine → front end: every image of request `id` served (`pack_served`)."""
    REFUSED = 6
    """engine → front end: request `id` not served (`NotServed`'s outcome, reason, detail)."""
    CALL = 7
    """front end → engine: an HTTP request for the engine's own app (metrics, config, admin, ...)."""
    REPLY = 8
    """engine → front end: the engine app's answer to CALL `id`."""
    ATTACH = 9
    """front end → engine, first: the shared segment it writes pixels to (`ring.py`), by its token."""
    STATS = 10
    """front end → engine, every half second: its front door's counts (for the engine's /metrics) and
    `delivered`, the delivery times of its responses since the last (`Engine.delivered`)."""


class WireError(ValueError):
    """A frame that breaks this format: the connection that sent it is closed."""


@dataclass(slots=True)
class Frame:
    kind: Kind
    id: int
    meta: dict[str, Any]
    payload: memoryview


def pack(kind: Kind, rid: int, meta: dict[str, Any] | None = None, payload_size: int = 0) -> bytes:
    """A frame's head and meta; its payload (`payload_size` bytes) is written right after."""
    m = json.dumps(meta or {}, separators=(",", ":")).encode()
    if len(m) > MAX_META:
        raise WireError(f"frame meta of {len(m)} bytes is over {MAX_META}")
    return HEAD.pack(len(m) + payload_size, int(kind), rid, len(m)) + m


class FrameReader:
    """Frames from a byte stream, for an `asyncio.BufferedProtocol`: `buffer()` is where the next
    bytes go, `advance(n)` says `n` arrived and returns the frame completed, if one was. Each frame's
    body is read into its own buffer, so its payload is handed on as a view, never copied."""

    def __init__(self, max_frame: int):
        self.max_frame = max_frame
        self._head = bytearray(HEAD.size)
        self._body: bytearray | None = None
        self._got = 0

    def buffer(self) -> memoryview:
        if self._body is None:
            return memoryview(self._head)[self._got :]
        return memoryview(self._body)[self._got :]

    def advance(self, n: int) -> Frame | None:
        self._got += n
        if self._body is None:
            if self._got < HEAD.size:
                return None
            size, kind, rid, meta_size = HEAD.unpack(self._head)
            if size > self.max_frame or meta_size > min(size, MAX_META):
                raise WireError(f"frame of {size} bytes (meta {meta_size}) is over the limit of {self.max_frame}")
            try:
                self._kind = Kind(kind)
            except ValueError:
                raise WireError(f"unknown frame kind {kind}") from None
            self._rid, self._meta_size = rid, meta_size
            self._body, self._got = bytearray(size), 0
            if size:
                return None
        body = self._body
        if self._got < len(body):
            return None
        self._body, self._got = None, 0
        view = memoryview(body)
        try:
            meta = json.loads(bytes(view[: self._meta_size])) if self._meta_size else {}
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise WireError(f"frame meta is not JSON ({type(e).__name__})") from None
        if not isinstance(meta, dict):
            raise WireError("frame meta is not a JSON object")
        return Frame(self._kind, self._rid, meta, view[self._meta_size :])


class FrameProtocol(asyncio.BufferedProtocol):
    """A connection that reads frames (`FrameReader`) into `on_frame`; a frame that breaks the format
    closes it (logged, naming `peer`)."""

    peer = "the other process"

    def __init__(self, max_frame: int):
        self.reader = FrameReader(max_frame)
        self.transport: asyncio.Transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            frame = self.reader.advance(nbytes)
        except WireError as e:
            log.error(f"bad frame from {self.peer}", extra={"event": "wire_error", "error": str(e)[:300]})
            self.transport.close()
            return
        if frame is not None:
            self.on_frame(frame)

    def on_frame(self, f: Frame) -> None:
        raise NotImplementedError


# -- one request's images, and their answers ---------------------------------------------------------
def pack_submit(rid: int, app: str, arrival_ms: float, pixels: np.ndarray) -> tuple[bytes, memoryview]:
    """(head + meta, payload) of a request: `pixels` uint8 (N, H, W, 3)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[3] != 3:
        raise WireError(f"pixels of dtype {pixels.dtype} and shape {pixels.shape}: want uint8 (N, H, W, 3)")
    pixels = np.ascontiguousarray(pixels)
    n, h, w, _ = pixels.shape
    meta = {"app": app, "arrival_ms": arrival_ms, "n": n, "h": h, "w": w}
    return pack(Kind.SUBMIT, rid, meta, pixels.nbytes), memoryview(pixels).cast("B")


def pack_submit_at(rid: int, app: str, arrival_ms: float, shape: tuple[int, ...], at: int) -> bytes:
    """A request whose pixels (uint8, `shape` = (N, H, W, 3)) lie at byte `at` of the sender's segment."""
    n, h, w, _ = shape
    return pack(Kind.SUBMIT, rid, {"app": app, "arrival_ms": arrival_ms, "n": n, "h": h, "w": w, "at": at})


def unpack_submit(frame: Frame, size: int, segment=None) -> tuple[str, float, np.ndarray]:
    """(app, arrival on the engine's clock in ms, uint8 (N, size, size, 3) over the frame's buffer,
    or over `segment` (a buffer) where the frame says `at`)."""
    m = frame.meta
    app, arrival, n, h, w = m.get("app"), m.get("arrival_ms"), m.get("n"), m.get("h"), m.get("w")
    ints = all(isinstance(v, int) for v in (n, h, w))
    if not isinstance(app, str) or not isinstance(arrival, int | float) or not ints or not math.isfinite(arrival):
        raise WireError(f"SUBMIT meta {m!r}: want app (str), arrival_ms (number), n, h, w (ints)")
    if h != size or w != size or n < 1:
        raise WireError(f"SUBMIT of {n} × {h} × {w} × 3 pixels; the model takes {size}²")
    nbytes, at = n * h * w * 3, m.get("at")
    if at is not None:
        if segment is None or not isinstance(at, int) or at < 0 or at + nbytes > len(segment) or len(frame.payload):
            raise WireError(f"SUBMIT at {at!r} of {nbytes} bytes: outside the shared segment, or none attached")
        return app, float(arrival), np.frombuffer(segment, np.uint8, nbytes, at).reshape(n, h, w, 3)
    if nbytes != len(frame.payload):
        raise WireError(f"SUBMIT of {n} × {h} × {w} × 3 pixels with {len(frame.payload)} bytes")
    return app, float(arrival), np.frombuffer(frame.payload, np.uint8).reshape(n, h, w, 3)


_FLOATS = ("queue_ms", "exec_ms", "total_ms", "utility")
_INTS = ("id", "gamma", "batch_size", "deadline_met")


@dataclass(slots=True)
class Answers:
    """A served request's answers as arrays, one row per image (`Served` fields)."""

    app: str
    probs: np.ndarray
    """(N, K) float32."""
    floats: np.ndarray
    """(N, 4) float64: queue_ms, exec_ms, total_ms, utility."""
    ints: np.ndarray
    """(N, 4) int64: id, gamma, batch_size, deadline_met."""


def pack_served(rid: int, served: list) -> list[bytes]:
    """The frame answering request `rid` with its `Served` records (one app, one class list). The
    images of one request served in one batch share every field but their id (consecutive) and
    probabilities: those fields travel once per such run (OPTIMIZATION: one tuple per image into
    arrays cost 1.7 µs an image on the engine's event loop; runs, 0.4 µs)."""
    n, k = len(served), len(served[0].probs)
    first = served[0]
    runs: list[list] = []
    key = None
    nxt = -1
    for s in served:
        now = (s.gamma, s.queue_ms, s.exec_ms, s.total_ms, s.deadline_met, s.batch_size, s.utility)
        if now != key or s.id != nxt:
            key = now
            runs.append([s.id, 0, *now])
        runs[-1][1] += 1
        nxt = s.id + 1
    try:  # rows of float32 in C order, as the runners answer: their bytes as they are
        probs = b"".join([s.probs for s in served])
    except (BufferError, TypeError, ValueError):  # a row that is a strided view
        probs = b""
    if len(probs) != n * k * 4:  # not float32 (the byte count tells): converted
        probs = np.array([s.probs for s in served], np.float32).tobytes()
    meta = {"app": first.app, "n": n, "k": k, "runs": runs}
    return [pack(Kind.SERVED, rid, meta, len(probs)), probs]


def unpack_served(frame: Frame) -> Answers:
    m = frame.meta
    n, k, app, runs = m.get("n"), m.get("k"), m.get("app"), m.get("runs")
    if not (isinstance(n, int) and isinstance(k, int) and isinstance(app, str) and isinstance(runs, list)):
        raise WireError(f"SERVED meta {m!r}: want app (str), n and k (ints >= 1), runs (a list)")
    if n < 1 or k < 1 or n * k * 4 != len(frame.payload):
        raise WireError(f"SERVED of {n} images × {k} classes with {len(frame.payload)} bytes")
    try:
        ids = np.concatenate([np.arange(r[0], r[0] + r[1]) for r in runs]) if runs else np.empty(0, np.int64)
        count = np.array([r[1] for r in runs], np.int64)
        fields = np.array([r[2:9] for r in runs], np.float64).reshape(len(runs), 7)  # gamma, queue..utility
    except (TypeError, ValueError, IndexError):
        raise WireError(f"SERVED runs {str(runs)[:200]}: want [first id, count, gamma, queue_ms, exec_ms, "
                        "total_ms, deadline_met, batch_size, utility] each") from None  # fmt: skip
    if len(ids) != n or (count < 1).any():
        raise WireError(f"SERVED runs cover {len(ids)} images, not {n}")
    per = np.repeat(fields, count, axis=0)  # (N, 7)
    floats = per[:, [1, 2, 3, 6]]  # queue_ms, exec_ms, total_ms, utility
    ints = np.stack([ids, per[:, 0], per[:, 5], per[:, 4]], axis=1).astype(np.int64)  # id, gamma, batch, met
    return Answers(app, np.frombuffer(frame.payload, np.float32).reshape(n, k), floats, ints)
