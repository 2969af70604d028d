"""decode_image: every pixel format a PNG or JPEG may carry decodes to the same picture."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from otas.engine.images import decode_image


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("seed", range(4))
def test_16_bit_grey_decodes_as_its_8_bit_image(seed):
    """A 16-bit greyscale PNG (Pillow's I;16) is the 8-bit image scaled by 257, not clipped at 255 (which
    turned every such upload nearly white and silently changed its label)."""
    rng = np.random.default_rng(seed)
    side = int(rng.integers(16, 96))
    grey8 = rng.integers(0, 256, (side, side), dtype=np.uint8)
    grey16 = grey8.astype(np.uint16) * 257  # the same picture at 16 bits
    want = decode_image(_png(Image.fromarray(grey8, "L")), 32)
    got = decode_image(_png(Image.fromarray(grey16)), 32)
    assert Image.open(io.BytesIO(_png(Image.fromarray(grey16)))).mode.startswith("I")  # the case under test
    assert got.shape == want.shape == (32, 32, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"])
def test_every_png_mode_keeps_the_brightness_of_the_picture(mode):
    """The mean brightness of a decoded ramp is the same whatever pixel mode the PNG stores it in."""
    ramp = np.tile(np.linspace(0, 255, 64), (64, 1)).astype(np.uint8)  # (64, 64), dark to bright
    rgb = Image.fromarray(np.stack([ramp] * 3, axis=-1), "RGB")
    if mode == "I;16":
        im = Image.fromarray(ramp.astype(np.uint16) * 257)
    elif mode == "1":
        im = Image.fromarray(ramp, "L").convert("1")  # dithered: the mean survives, not the pixels
    else:
        im = rgb.convert(mode)
    want = decode_image(_png(rgb), 32).mean()
    assert abs(decode_image(_png(im), 32).mean() - want) < 6
