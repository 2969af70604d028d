"""Collation of a batch's images into one preallocated buffer, holding the GIL.

`np.stack(images, out=...)` copies image by image, and NumPy releases the GIL around each copy of more
than a few hundred elements (a 32 × 32 RGB image is 3,072). On the device thread of `otas serve`, each
release is followed by a wait for the GIL while the event loop runs Python: up to the switch interval
per image. Beside a thread that runs Python, `np.stack` of 256 such images took 67 ms on a 2-core CPU
against 0.24 ms alone (bench/collate_gil.py; on an H100 host, bench/gil.py's served CUDA path at
b = 256 took 5.6 ms alone and 59 ms beside a spinning thread). `collate` joins the images' bytes (one
C loop, which gives the GIL up at most once, past 1 MiB) and copies them in with one memoryview
assignment (no release): 0.15 ms alone, 0.17 ms beside the busy thread. No torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def collate(images: Sequence[np.ndarray] | np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write `images` ((H, W, C) arrays, or one (b, H, W, C) array) into `out[:b]` and return that view.
    Images of `out`'s dtype and image shape, C-contiguous (decoded and tensor images are) take the fast
    copy; any other goes through NumPy (`np.stack`'s casting and errors)."""
    b = len(images)
    if b > len(out):
        raise ValueError(f"batch of {b} images; the buffer holds {len(out)}")
    view = out[:b]
    if isinstance(images, np.ndarray):
        np.copyto(view, images, casting="same_kind")  # one copy: one GIL release at most
        return view
    shape, dtype = out.shape[1:], out.dtype
    fast = out.flags.c_contiguous and all(
        isinstance(im, np.ndarray) and im.shape == shape and im.dtype == dtype and im.flags.c_contiguous
        for im in images
    )
    if fast:
        memoryview(out).cast("B")[: view.nbytes] = b"".join(images)
    else:
        np.stack(images, out=view)
    return view
