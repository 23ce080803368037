"""The deployment's input path (`rnd.data.encoding`): a PNG round trip is exactly the rounding to
8 bits; a JPEG one is lossy, stays in [0, 1] and keeps the shape and device; bad shapes, codecs and
qualities are refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from rnd.data.encoding import JPEG_QUALITY, roundtrip, to_uint8


@pytest.mark.parametrize("channels", [1, 3])
def test_png_is_the_8_bit_rounding_and_jpeg_loses_more(channels):
    x = torch.rand(5, channels, 16, 16, generator=torch.Generator().manual_seed(0))
    png = roundtrip(x, "png")
    assert torch.equal(png, (x * 255).round() / 255) and png.dtype == torch.float32
    assert torch.equal(roundtrip(png, "png"), png)  # 8-bit images go through unchanged
    for img, got in zip(to_uint8(x), png, strict=True):  # what Pillow's PNG codec gives back
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if channels == 1 else img).save(buf, format="PNG")
        back = np.array(Image.open(io.BytesIO(buf.getvalue())), dtype=np.uint8).reshape(img.shape)
        assert torch.equal(torch.from_numpy(back).permute(2, 0, 1).float() / 255, got)
    jpeg = roundtrip(x, "jpeg")
    assert jpeg.shape == x.shape and float(jpeg.min()) >= 0 and float(jpeg.max()) <= 1
    assert float((jpeg - x).abs().mean()) > float((png - x).abs().mean()) * 10  # noise does not survive
    smooth = torch.linspace(0, 1, 16).expand(2, channels, 16, 16).contiguous()
    assert float((roundtrip(smooth, "jpeg") - smooth).abs().max()) < 0.1  # smooth images do
    assert float((roundtrip(x, "jpeg", quality=95) - x).abs().mean()) < float((jpeg - x).abs().mean())
    assert JPEG_QUALITY == 75


def test_to_uint8_clamps_and_rounds():
    x = torch.tensor([[[[-0.5, 0.0, 0.5 / 255, 1.5 / 255, 2.0]]]])
    assert to_uint8(x).reshape(-1).tolist() == [0, 0, 0, 2, 255]  # round half to even at 0.5


@pytest.mark.parametrize(
    ("shape", "codec", "quality", "words"),
    [
        ((2, 2, 8, 8), "png", 75, "1 or 3"),
        ((2, 8, 8), "png", 75, "1 or 3"),
        ((2, 1, 8, 8), "webp", 75, "unknown codec"),
        ((2, 1, 8, 8), "jpeg", 0, "quality"),
        ((2, 1, 8, 8), "jpeg", 100, "quality"),
    ],
)
def test_bad_input_is_refused(shape, codec, quality, words):
    with pytest.raises(ValueError, match=words):
        roundtrip(torch.rand(shape), codec, quality)
