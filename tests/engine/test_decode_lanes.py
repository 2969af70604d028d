"""The two decode lanes: a payload's size read from its header alone (PNG, JPEG, WEBP), large images
routed to their own bounded lane, and a small image never waiting behind large ones."""

import asyncio
import io
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, features

from otas.data.preprocess import Preprocess
from otas.engine.images import LARGE_PIXELS, DecodeBusy, Decoder, declared_size, decode_image, is_large
from tests.server.helpers import SIZE, png

FORMATS = [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}), ("JPEG", {"subsampling": 0})]
if features.check("webp"):
    FORMATS += [("WEBP", {}), ("WEBP", {"lossless": True})]


def encoded(fmt: str, w: int, h: int, mode: str = "RGB", seed: int = 0, **kw) -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(FORMATS),
    st.sampled_from(["RGB", "L", "RGBA"]),
    st.integers(1, 700),
    st.integers(1, 700),
    st.integers(0, 99),
)
def test_declared_size_is_what_pillow_reads(fmt_kw, mode, w, h, seed):
    fmt, kw = fmt_kw
    mode = "RGB" if fmt == "JPEG" and mode == "RGBA" else mode
    data = encoded(fmt, w, h, mode, seed, **kw)
    assert declared_size(data) == (w, h) == Image.open(io.BytesIO(data)).size


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"RIFF\0\0\0\0WEBP"]))
def test_declared_size_of_junk_is_unknown_or_a_pair(tail, head):
    """Truncated or arbitrary bytes never raise; a size, if any, is two non-negative ints."""
    got = declared_size(head + tail)
    assert got is None or (len(got) == 2 and all(isinstance(v, int) and v >= 0 for v in got))


def test_declared_size_refuses_truncated_headers():
    whole = encoded("PNG", 40, 30)
    assert declared_size(whole[:20]) is None  # IHDR cut short
    assert declared_size(b"\xff\xd8\xff") is None
    assert declared_size(b"RIFF\0\0\0\0WEBPVP8X") is None
    assert declared_size(b"junk") is None and declared_size(b"") is None


def test_large_is_by_pixels_to_decode():
    pre = Preprocess(32)
    side = int(LARGE_PIXELS**0.5)
    assert not is_large(encoded("PNG", side, side), pre)
    assert is_large(encoded("PNG", side + 1, side), pre)
    assert is_large(b"not an image", pre)  # no size in its header: the large lane, where it is refused cheaply
    # a JPEG counts at its DCT-scaled size: a 4000 x 3000 photo resized to 32 px decodes at 1/8 a side
    photo = encoded("JPEG", 2400, 1800)
    assert not is_large(photo, pre)
    assert is_large(photo, Preprocess(2048))  # decoded whole for a model that wants 2048 px


def test_lanes_decode_what_one_lane_decodes():
    payloads = [png(i) for i in range(4)] + [encoded("PNG", 600, 500, seed=i) for i in range(3)]

    async def main():
        dec = Decoder(SIZE, workers=1)
        try:
            return await dec.many(payloads)
        finally:
            dec.shutdown()

    got = asyncio.run(main())
    assert all(np.array_equal(g, decode_image(p, SIZE)) for g, p in zip(got, payloads, strict=True))


def test_a_small_image_never_waits_behind_large_ones():
    """Large payloads whose decode is held (a stand-in for 60 ms images) fill their lane; small ones
    still decode at once, and the large ones finish once let go."""
    release = threading.Event()
    big = encoded("PNG", 600, 600)

    async def main():
        dec = Decoder(SIZE, workers=1, large_workers=1, max_large=4)
        real_job = dec._job

        def job(data, deadline):
            if len(data) == len(big):
                release.wait(10)
            return real_job(data, deadline)

        dec._job = job
        try:
            large = asyncio.ensure_future(dec.many([big] * 4))
            await asyncio.sleep(0.05)
            with pytest.raises(DecodeBusy, match="large images"):
                await dec.many([big])  # its lane holds 4
            small = await asyncio.wait_for(asyncio.gather(*(dec.many([png(i)]) for i in range(8))), 5)
            assert not large.done()
            release.set()
            return small, await asyncio.wait_for(large, 10), dec.pending
        finally:
            release.set()
            dec.shutdown()

    small, large, pending = asyncio.run(main())
    assert len(small) == 8 and len(large) == 4 and pending == 0


def test_on_large_is_called_once_for_a_request_with_large_images():
    calls = []

    async def main():
        dec = Decoder(SIZE, workers=1)
        try:
            await dec.many([png(0), png(1)], on_large=lambda: calls.append("small"))
            await dec.many([png(0), encoded("PNG", 600, 600), b"junk"], on_large=lambda: calls.append("large"))
        except Exception as e:  # the junk payload fails its request
            calls.append(type(e).__name__)
        finally:
            dec.shutdown()

    asyncio.run(main())
    assert calls == ["large", "ImageError"]


def test_lane_options_are_checked():
    with pytest.raises(ValueError, match="large_workers"):
        Decoder(SIZE, large_workers=0)
    with pytest.raises(ValueError, match="max_large"):
        Decoder(SIZE, max_large=0)


def test_a_jpeg_with_many_segments_before_its_frame_costs_a_bounded_walk():
    """`declared_size` runs on the event loop: past SIZE_SEGMENTS segments it gives up (the large lane)."""
    from otas.engine.images import SIZE_SEGMENTS

    photo = encoded("JPEG", 64, 48)
    comment = b"\xff\xfe\x00\x04ab"  # a 4-byte COM segment
    few = photo[:2] + comment * (SIZE_SEGMENTS // 2) + photo[2:]
    many = photo[:2] + comment * 100_000 + photo[2:]
    assert declared_size(few) == (64, 48)
    assert declared_size(many) is None and is_large(many, Preprocess(32))
