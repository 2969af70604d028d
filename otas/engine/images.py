"""Image payloads -> uint8 (H, W, 3) arrays at the model's size. No torch: runs in decode threads.

An encoded image is a cheap way to ask for a lot of work: a 2 KB PNG can declare 4096 × 4096
pixels, and Pillow decodes many formats. So a payload is decoded only if it is one of a short list
of formats (`DecodeLimits.formats`, PNG and JPEG by default) and its header declares a size within
limits on each side, on the pixel count and on the aspect ratio; and it is decoded as small as the
format allows (JPEG: DCT scaling; any format: an integer box reduction before the resize). The
decode pool's queue is bounded: a full queue refuses at once (`DecodeBusy`) instead of growing.

Every failure to decode is an `ImageError` (a ValueError) whose message names the offending value
and the remedy, so the server can answer 400 without guessing: whatever a decoder raises on
client bytes is the client's bad payload, never a server error.
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import struct
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from otas.data.preprocess import Preprocess

# Our own limits (DecodeLimits) are far below Pillow's bomb threshold and are checked before any
# pixel is decoded; Pillow's warning would only repeat them, from every decode thread.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

FORMATS = ("PNG", "JPEG")
"""Formats decoded by default: what clients send, with cheap, well-fuzzed decoders. WEBP may be
added (`--image-formats PNG,JPEG,WEBP`); it decodes 3-10x slower per pixel here and has no reduced
decode. Everything else Pillow reads (BMP, TIFF, GIF, ICO, TGA, JPEG 2000, ...) is refused."""
ACCEPTABLE = ("PNG", "JPEG", "WEBP")
"""The formats that may be turned on: PNG and JPEG have their structure checked before Pillow
opens them (`DecodeLimits.check_structure`); WEBP's decoder bounds its own work."""


@dataclass(frozen=True)
class DecodeLimits:
    """What a payload may declare before a pixel of it is decoded."""

    max_side: int = 4096
    """Longest side in pixels."""
    max_pixels: int = 1 << 22
    """Width × height decoded (4 MP: a 2048 × 2048 PNG). Decoding costs about 10 ms per MP here (PNG,
    RGB). A JPEG counts at the size its DCT scaling decodes (up to 1/8 a side): a 12 MP photo to be
    resized to 32 px decodes about 0.2 MP."""
    max_aspect: float = 16.0
    """Longer side / shorter side."""
    formats: tuple[str, ...] = FORMATS
    """Pillow format names accepted."""
    max_segments: int = 4096
    """PNG chunks, or JPEG segments before the image data: Pillow walks them in Python (~2.5 µs
    each), so 600,000 empty chunks in a 7 MB file cost 1.5 s. An 8 MiB PNG in libpng's 8 KiB
    chunks has about 1,000."""
    max_scans: int = 64
    """JPEG scans (a progressive JPEG has about 10; each is a pass of libjpeg over the image)."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_side, int) or self.max_side < 1:
            raise ValueError(f"max_image_side={self.max_side!r}: use a positive number of pixels, e.g. 4096")
        if not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ValueError(f"max_image_pixels={self.max_pixels!r}: use a positive pixel count, e.g. 4194304")
        if not self.max_aspect >= 1:
            raise ValueError(f"max_image_aspect={self.max_aspect!r}: use a ratio >= 1 (longer / shorter side)")
        bad = [f for f in self.formats if f not in ACCEPTABLE]
        if not self.formats or bad:
            raise ValueError(
                f"image formats {bad or list(self.formats)}: use some of {','.join(ACCEPTABLE)} (the others' "
                "decoders are neither cheap nor checked here)"
            )

    def check(self, w: int, h: int, decoded: tuple[int, int] | None = None) -> None:
        """Raise ImageError if a w × h image is over the limits; `decoded`: the size it will be
        decoded at (a JPEG's DCT scaling), which the pixel limit applies to (default: w × h)."""
        dw, dh = decoded or (w, h)
        if w < 1 or h < 1:
            raise ImageError(f"image is {w}x{h} pixels; send a non-empty image")
        if max(w, h) > self.max_side or dw * dh > self.max_pixels or max(w, h) / min(w, h) > self.max_aspect:
            at = f" (decoded at {dw}x{dh})" if (dw, dh) != (w, h) else ""
            raise ImageError(
                f"image is {w}x{h} pixels{at}; the limits are {self.max_side} pixels a side, {self.max_pixels} "
                f"pixels decoded and an aspect ratio of {self.max_aspect:g}; downscale or crop it first"
            )

    def check_structure(self, data: bytes) -> None:
        """Raise ImageError if a PNG or JPEG is made of more pieces than any real image (a walk of at
        most `max_segments` steps; JPEG markers are unambiguous, so scans are counted at C speed)."""
        n = 0
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            pos = 8
            while pos + 8 <= len(data):
                length, kind = struct.unpack_from(">I4s", data, pos)
                pos, n = pos + 12 + length, n + 1
                if n > self.max_segments:
                    break
                if kind == b"IEND":
                    return
        elif data.startswith(b"\xff\xd8"):
            if (scans := data.count(b"\xff\xda")) > self.max_scans:
                raise ImageError(f"JPEG has {scans} scans, over the limit of {self.max_scans}; re-encode it")
            pos = 2
            while pos + 4 <= len(data) and data[pos] == 0xFF and n <= self.max_segments:
                marker = data[pos + 1]
                if marker == 0xDA:  # start of scan: the image data (libjpeg's from here)
                    return
                step = (
                    2
                    if marker in (0x01, 0xFF) or 0xD0 <= marker <= 0xD8
                    else 2 + struct.unpack_from(">H", data, pos + 2)[0]
                )
                pos, n = pos + (1 if marker == 0xFF else step), n + 1
        if n > self.max_segments:
            raise ImageError(
                f"image is made of more than {self.max_segments} chunks or segments; no real image has that "
                "many: re-encode it"
            )


class ImageError(ValueError):
    """A payload that is not a usable image."""


class DecodeBusy(Exception):
    """The decode queue is full: refuse the request now (a 429), do not queue it."""


class DecodeExpired(Exception):
    """A payload's request ran out of time while waiting to be decoded; it was not decoded."""


class DecodeRestarted(Exception):
    """A decode process died (killed, or a decoder crash) and was replaced; the request may be retried."""


def _expired() -> DecodeExpired:
    return DecodeExpired("the request's deadline passed while its images waited to be decoded")


def decode_image(data: bytes, pre: Preprocess | int, limits: DecodeLimits | None = None) -> np.ndarray:
    """Encoded image bytes -> (size, size, 3) uint8 RGB, resized and cropped as the model's
    preprocessing says (an int: a plain resize to that side); raises ImageError."""
    limits = limits or DecodeLimits()
    pre = Preprocess(pre) if isinstance(pre, int) else pre
    if not data:
        raise ImageError("empty image payload; send the encoded bytes of a PNG or JPEG file")
    accepted = "/".join(limits.formats)
    try:
        limits.check_structure(data)
        with Image.open(io.BytesIO(data), formats=limits.formats) as im:
            w, h = im.size
            if w < 1 or h < 1 or max(w, h) > limits.max_side:  # before draft's arithmetic on the size
                limits.check(w, h)
            if im.format == "JPEG":  # OPTIMIZATION: DCT scaling decodes at 1/2..1/8, never below the resize
                im.draft("RGB", pre.draft_size())
            limits.check(w, h, im.size)
            return _pixels(im, pre)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(
            f"payload of {len(data)} bytes starting {data[:8]!r} is not a {accepted} image; send {accepted} bytes"
        ) from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"image declares too many pixels ({e}); downscale it first") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure on client bytes is a bad payload
        raise ImageError(
            f"{accepted} payload of {len(data)} bytes is corrupt or truncated ({type(e).__name__}: {e}); "
            "resend the whole file"
        ) from None


def _pixels(im: Image.Image, pre: Preprocess) -> np.ndarray:
    im.load()  # the full decode: truncated and corrupt files fail here
    if im.mode == "1":
        im = im.convert("L")  # resampling needs 8 bits; grey costs a third of RGB
    elif im.mode == "I" or im.mode.startswith("I;16"):
        # 16-bit grey (PNG): Pillow's convert clips at 255, which turns the image white; scale it instead
        a = np.asarray(im, dtype=np.float64)  # (H, W), 0..65535
        im = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")
    elif im.mode not in ("L", "RGB"):
        im = im.convert("RGB")  # palette, alpha, CMYK, 16-bit
    # OPTIMIZATION: reducing_gap box-reduces by an integer factor first (only for an image over 4x
    # the resize, so one near the model's size is resized exactly as timm's transform does)
    im = pre.fit(im, reducing_gap=2.0)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def tensor_images(datatype: str, shape: list[int], data: np.ndarray, size: int) -> list[np.ndarray]:
    """A flat UINT8 (0..255) or FP32 (0..1) tensor of shape (N, size, size, 3) -> N uint8 images."""
    want = [-1, size, size, 3]
    if len(shape) == 3:
        shape = [1, *shape]
    if len(shape) != 4 or list(shape[1:]) != want[1:] or shape[0] < 1:
        raise ImageError(f"tensor shape {shape} is wrong; send [N, {size}, {size}, 3] (HWC, RGB) images")
    n = int(np.prod(shape))
    if data.size != n:
        raise ImageError(f"tensor data has {data.size} values but shape {shape} needs {n}; check shape and data")
    if datatype == "UINT8":
        # raw bytes (binary data) are uint8 already: no range to check, nothing to copy
        if data.dtype != np.uint8 and (data.min(initial=0) < 0 or data.max(initial=0) > 255):
            raise ImageError("UINT8 tensor values must lie in 0..255")
        x = data.astype(np.uint8, copy=False).reshape(shape)
    elif datatype == "FP32":
        if not np.isfinite(data).all() or data.min(initial=0) < 0 or data.max(initial=0) > 1:
            raise ImageError("FP32 tensor values must be finite pixel intensities in [0, 1]")
        x = np.rint(data.astype(np.float32) * 255).astype(np.uint8).reshape(shape)
    else:
        raise ImageError(f"datatype {datatype!r} is not an image type; use BYTES, UINT8 or FP32")
    return list(x)


NICE = 10
"""Decode threads run at this niceness (Linux: per thread): a costly image then takes CPU from other
decoding, hardly from the model's forward or the event loop."""
NICE_LARGE = 19
"""Threads (or processes) of the large-image lane run at this niceness: below the small images' lane,
so a stream of large images never slows the decoding of small ones."""
LARGE_PIXELS = 1 << 18
"""A payload whose header declares more pixels to decode than this (512 × 512; a JPEG counted at the
size its DCT scaling decodes) is decoded in the large-image lane, as is one whose header tells no size:
at about 10 ms per MP, a small image's decode then never waits behind a large one's."""


SIZE_SEGMENTS = 32
"""JPEG segments `declared_size` walks to find the frame header (a camera's APP and table segments come
to about 10-20): it runs on the event loop, so a crafted file costs it at most this many steps."""


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, a JPEG's frame header or a WEBP's header, read from the
    bytes without decoding anything; None where the header does not tell (or is not one of those)."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            return struct.unpack_from(">II", data, 16)
        if data.startswith(b"\xff\xd8"):
            pos = 2
            for _ in range(SIZE_SEGMENTS):
                if data[pos] != 0xFF:
                    return None
                marker = data[pos + 1]
                if marker == 0xFF:  # fill byte
                    pos += 1
                    continue
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
                    h, w = struct.unpack_from(">HH", data, pos + 5)
                    return w, h
                if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
                    pos += 2
                else:
                    pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
            return None
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            kind = data[12:16]
            if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
                w, h = struct.unpack_from("<HH", data, 26)
                return w & 0x3FFF, h & 0x3FFF
            if kind == b"VP8L" and data[20] == 0x2F:
                bits = struct.unpack_from("<I", data, 21)[0]
                return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
            if kind == b"VP8X" and len(data) >= 30:
                return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    except (IndexError, struct.error):
        pass
    return None


def is_large(data: bytes, pre: Preprocess) -> bool:
    """Whether a payload goes to the large-image lane (`LARGE_PIXELS`): decided from its header alone,
    in microseconds, so the event loop can route every payload of a request."""
    size = declared_size(data)
    if size is None:
        return True
    w, h = size
    if data.startswith(b"\xff\xd8"):  # decoded at 1/2..1/8 a side where that keeps the resize's pixels
        want = pre.draft_size()[0]
        k = next((k for k in (8, 4, 2) if w // k >= want and h // k >= want), 1)
        w, h = -(-w // k), -(-h // k)
    return w * h > LARGE_PIXELS


def _lower_priority(nice: int = NICE) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):  # not Linux, or not allowed: same priority as the rest
        pass


class Decoder:
    """Decodes payloads on small thread pools, off the event loop (for the engine and the Ray router),
    to the model's input as its `Preprocess` says (an int: a plain resize to that side). With
    `processes`, processes decode instead, payloads handed off in chunks (`decode_pool.py`): Pillow
    holds the GIL for much of a small image's decode, so threads do not add up on many cores.

    Two lanes, chosen per payload from its header (`is_large`): small images on `workers` threads (or
    processes) at niceness `NICE`, large ones (or of unknown size) on `large_workers` (default half,
    at least one) at `NICE_LARGE`. A large image costs up to ~60 ms; in one queue, small ones would
    wait behind a stream of them, and requests would miss their deadlines while the CPU decodes
    images the clients could have sent smaller.

    At most `max_queue` payloads wait or decode at once, and at most `max_large` (default
    `max_queue` // 16, at least one) of them large; a request that would overflow either is refused
    whole (`DecodeBusy`). A payload whose request's deadline passes while it waits is not decoded
    (`DecodeExpired`), and a request that fails or is abandoned takes its waiting payloads with it."""

    def __init__(
        self,
        size: Preprocess | int,
        workers: int = 2,
        limits: DecodeLimits | None = None,
        max_queue: int = 256,
        clock=time.monotonic,
        processes: bool = False,
        large_workers: int | None = None,
        max_large: int | None = None,
    ):
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"decode_queue={max_queue!r}: use a positive number of images, e.g. 256")
        large_workers = max(1, workers // 2) if large_workers is None else large_workers
        self.max_large = max(1, max_queue // 16) if max_large is None else max_large
        if large_workers < 1 or self.max_large < 1:
            raise ValueError(f"large_workers={large_workers}, max_large={self.max_large}: use integers >= 1")
        self.pre = Preprocess(size) if isinstance(size, int) else size
        self.size, self.limits, self.max_queue, self._clock = self.pre.size, limits or DecodeLimits(), max_queue, clock
        self._processes = processes
        self._lanes = (
            self._lane(workers, NICE, "otas-decode"),
            self._lane(large_workers, NICE_LARGE, "otas-decode-large"),
        )
        self._lock = threading.Lock()
        self._pending = [0, 0]  # small, large

    def _lane(self, workers: int, nice: int, name: str):
        if self._processes:  # payloads handed off in chunks (decode_pool.py)
            from otas.engine.decode_pool import ProcessDecodePool

            return ProcessDecodePool(self.pre, self.limits, workers, self._past, _expired, nice=nice)
        return ThreadPoolExecutor(
            workers, thread_name_prefix=name, initializer=functools.partial(_lower_priority, nice)
        )

    @property
    def pending(self) -> int:
        """Payloads waiting or being decoded."""
        return sum(self._pending)

    async def many(
        self, payloads: Sequence[bytes], deadline: float | None = None, on_large: Callable[[], None] | None = None
    ) -> list[np.ndarray]:
        """Encoded images -> uint8 (size, size, 3) each, all or nothing: raises DecodeBusy (queue full),
        ImageError (the first bad payload) or DecodeExpired (past `deadline`, on `clock`). `on_large`:
        called once, as they are queued, if any of them go to the large-image lane (the server frees
        the request's place at its front door then: that lane is bounded on its own, and small
        requests must not wait for a place held by large ones)."""
        lanes = [int(is_large(p, self.pre)) for p in payloads]
        large = sum(lanes)
        with self._lock:
            if self.pending + len(payloads) > self.max_queue:
                raise DecodeBusy(
                    f"{self.pending} images are waiting to be decoded and this request brings {len(payloads)}; "
                    f"the decode queue holds {self.max_queue}; retry shortly"
                )
            if large and self._pending[1] + large > self.max_large:
                raise DecodeBusy(
                    f"{self._pending[1]} large images (over {LARGE_PIXELS} pixels to decode) are waiting to be "
                    f"decoded and this request brings {large}; at most {self.max_large} may wait; retry shortly, "
                    f"or send images nearer the model's input of {self.size}x{self.size}"
                )
            self._pending[0] += len(payloads) - large
            self._pending[1] += large
        if large and on_large is not None:
            on_large()
        futures = [
            asyncio.wrap_future(self._submit(p, deadline, lane)) for p, lane in zip(payloads, lanes, strict=True)
        ]
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for f in futures:  # on a failure or cancellation: payloads not yet started are never decoded
                f.cancel()

    async def __call__(self, data: bytes) -> np.ndarray:
        return (await self.many([data]))[0]

    def _submit(self, data: bytes, deadline: float | None, lane: int) -> Future:
        pool = self._lanes[lane]
        f = pool.submit(data, deadline) if self._processes else pool.submit(self._job, data, deadline)
        f.add_done_callback(functools.partial(self._done, lane))
        return f

    def _past(self, deadline: float | None) -> bool:
        """Whether a payload's request is out of time (on `clock`)."""
        return deadline is not None and self._clock() > deadline

    def _job(self, data: bytes, deadline: float | None) -> np.ndarray:
        if self._past(deadline):
            raise _expired()
        return decode_image(data, self.pre, self.limits)

    def _done(self, lane: int, _: Future) -> None:
        with self._lock:
            self._pending[lane] -= 1

    def shutdown(self) -> None:
        for pool in self._lanes:
            if self._processes:
                pool.shutdown()
            else:
                pool.shutdown(wait=False, cancel_futures=True)
