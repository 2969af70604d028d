"""Image payloads -> uint8 (H, W, 3) arrays at the model's size. No torch: runs in decode threads.

Every failure is an `ImageError` (a ValueError) whose message names the offending value and the
remedy, so the server can answer 400 without guessing.
"""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 4096 * 4096
"""Largest decoded image (width × height) accepted; guards against decompression bombs."""


class ImageError(ValueError):
    """A payload that is not a usable image."""


def decode_image(data: bytes, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, ...) -> (size, size, 3) uint8 RGB, resized if needed."""
    if not data:
        raise ImageError("empty image payload; send the encoded bytes of a PNG or JPEG file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"image is {w}x{h} pixels, over the limit of {max_pixels}; downscale it first")
            im = im.convert("RGB")  # forces the full decode: truncated files fail here
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(
            f"payload of {len(data)} bytes starting {data[:8]!r} is not a recognised image; send PNG or JPEG bytes"
        ) from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL: truncated or corrupt data
        raise ImageError(
            f"image payload of {len(data)} bytes is corrupt or truncated ({e}); resend the whole file"
        ) from None


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
        if data.min(initial=0) < 0 or data.max(initial=0) > 255:
            raise ImageError("UINT8 tensor values must lie in 0..255")
        x = data.astype(np.uint8).reshape(shape)
    elif datatype == "FP32":
        if not np.isfinite(data).all() or data.min(initial=0) < 0 or data.max(initial=0) > 1:
            raise ImageError("FP32 tensor values must be finite pixel intensities in [0, 1]")
        x = np.rint(data.astype(np.float32) * 255).astype(np.uint8).reshape(shape)
    else:
        raise ImageError(f"datatype {datatype!r} is not an image type; use BYTES, UINT8 or FP32")
    return list(x)


class Decoder:
    """Decodes payloads on a small thread pool, off the event loop (for the engine and the Ray router)."""

    def __init__(self, size: int, workers: int = 2, max_pixels: int = MAX_PIXELS):
        self.size, self.max_pixels = size, max_pixels
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="otas-decode")

    async def __call__(self, data: bytes) -> np.ndarray:
        """Encoded image -> uint8 (size, size, 3); raises ImageError."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, decode_image, data, self.size, self.max_pixels)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
