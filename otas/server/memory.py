"""Give request buffers back to the OS (glibc only; elsewhere these are no-ops).

glibc serves an allocation above its mmap threshold from mmap, and a freed one goes back to the OS
at once. But the threshold adapts: freeing an mmapped 8 MiB body raises it to 8 MiB, so the next
bodies come from the heap, which fragments and keeps its size: after a burst of large uploads the
process stayed 1 GiB larger. `tune()` fixes the threshold (large buffers always mmapped); `trim()`
returns the free heap pages once a burst is over.

The threshold is 2 MiB, not glibc's starting 128 KiB: below it sit the event loop's 256 KiB socket
reads and the model's CPU activations (a ViT-Tiny MLP's hidden state is 0.8 MB per image), which as
mmaps were zero-filled page by page on every read and every forward. On the shipped model on one CPU
core that was 15 % of the server's CPU time (bench/abuse.py: 12-13 s against 10.5 s of CPU for the
same 20 s of normal traffic).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading

log = logging.getLogger("otas.server")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_libc = None


def _glibc():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    return _libc or None


def tune(mmap_threshold: int = 2 << 20) -> bool:
    """Allocations of `mmap_threshold` bytes or more come from mmap (and go back when freed); the
    heap's top is given back once 1 MiB of it is free (at 4 × the 2 MiB threshold, rounds of 40
    uploads of 2 MiB left the process up to 17 MB larger; at 1 MiB, 4 MB). True when glibc took the
    settings."""
    lib = _glibc()
    if lib is None:
        return False
    ok = lib.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1 and lib.mallopt(_M_TRIM_THRESHOLD, 1 << 20)
    log.debug("malloc tuned", extra={"event": "malloc_tuned", "mmap_threshold": mmap_threshold, "ok": bool(ok)})
    return bool(ok)


def trim() -> None:
    """Return free heap memory (every arena) to the OS."""
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)


def trim_soon() -> None:
    """`trim()` on a short-lived thread: it locks the allocator's arenas and may take milliseconds."""
    if _glibc() is not None:
        threading.Thread(target=trim, name="otas-trim", daemon=True).start()


def freeze_heap() -> None:
    """Collect, then move every object alive now to the cyclic GC's permanent generation: call once
    loaded and warmed up, just before serving.

    Torch, the model and the libraries are ~400,000 objects that every full collection would scan
    again. Serving churns objects (connections, futures, bodies), so full collections come during
    bursts, and each stops the event loop: 220-310 ms on a 2-core CPU, while the sockets of new
    requests went unread (their deadlines run from the first byte read). Frozen, they are never
    scanned again."""
    gc.collect()
    gc.freeze()
