"""The shared pixel segment's allocator: live places never overlap and stay inside the segment, in
whatever order they are freed; once everything is freed, the whole segment is free again. And a
segment handed to a spawned process is the same memory there."""

import multiprocessing

import numpy as np
import pytest

from otas.server.ring import Ring, Segment


@pytest.mark.parametrize("seed", range(20))
def test_live_places_never_overlap_whatever_order_they_are_freed(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(64, 4096))
    ring, live = Ring(size), {}
    for key in range(2000):
        if live and rng.random() < 0.5:
            k = list(live)[int(rng.integers(len(live)))]  # any of them, not only the oldest
            ring.free(k)
            del live[k]
        n = int(rng.integers(1, size // 3 + 2))
        at = ring.alloc(key, n)
        if at is not None:
            assert 0 <= at and at + n <= size
            for s, e in live.values():
                assert at + n <= s or e <= at, (at, n, live)
            live[key] = (at, at + n)
        assert ring.used == sum(e - s for s, e in live.values())
    for k in list(live):
        ring.free(k)
    assert ring.alloc(-1, size) == 0  # all of it, once nothing is live


def test_a_place_is_refused_when_nothing_fits_and_found_again_once_freed():
    ring = Ring(100)
    assert [ring.alloc(k, 30) for k in range(3)] == [0, 30, 60]
    assert ring.alloc(3, 30) is None  # 10 left at the end, none at the front
    ring.free(1)  # a hole in the middle: reused only once the older place is freed too
    assert ring.alloc(3, 30) is None
    ring.free(0)
    assert ring.alloc(3, 30) == 0  # wrapped to the front
    assert ring.alloc(4, 40) is None and ring.alloc(4, 29) == 30
    assert ring.alloc(5, 0) is None and ring.alloc(6, 101) is None


def _fill(handle, value):
    seg = handle.open()
    np.frombuffer(seg.map, np.uint8)[:] = value


def test_a_segment_handed_to_a_spawned_process_is_shared_memory():
    seg = Segment.new(1 << 16)
    p = multiprocessing.get_context("spawn").Process(target=_fill, args=(seg.handle(), 7))
    p.start()
    seg.close()
    p.join(60)
    assert p.exitcode == 0
    assert (np.frombuffer(seg.map, np.uint8) == 7).all()
