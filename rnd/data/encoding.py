"""The deployment's input path: an image batch in [0, 1] encoded as a deployed model receives it
(8-bit PNG, or JPEG at a stated quality) and decoded again, with Pillow's codecs.

An adversarial example an attack returns is a float tensor; a deployment that accepts image
files sees it only after it has been written as one. PNG is lossless at 8 bits, so its round trip
is the rounding to the nearest of 256 levels (computed so, on the batch: a test checks Pillow's PNG
codec gives the same); JPEG's also quantises the image's DCT coefficients
(libjpeg's tables scaled by the quality; 4:2:0 chroma subsampling for colour images, Pillow's
default), which can wash out a small perturbation.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import torch
from PIL import Image

#: Pillow's and libjpeg's default quality: what a service re-encoding uploads commonly uses.
JPEG_QUALITY = 75

Codec = Literal["png", "jpeg"]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H, W, C) uint8, rounded to the nearest level."""
    arr = (x.detach().to("cpu", torch.float32).clamp(0, 1) * 255.0).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).numpy()


def roundtrip(x: torch.Tensor, codec: Codec, quality: int = JPEG_QUALITY) -> torch.Tensor:
    """`x` (N, C, H, W in [0, 1], C = 1 or 3) written as `codec` files and read back, as float32
    on `x`'s device. `quality`: JPEG's, 1-95."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"roundtrip takes (N, 1 or 3, H, W) images, got {tuple(x.shape)}")
    if codec not in ("png", "jpeg"):
        raise ValueError(f"unknown codec {codec!r} (png, jpeg)")
    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality {quality} is outside 1-95")
    if codec == "png":  # lossless at 8 bits: its round trip is the rounding, done on the batch
        return torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2).to(torch.float32).div(255.0).to(x.device)
    out = []
    for img in to_uint8(x):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)  # uint8: L or RGB
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as back:
            arr = np.asarray(back.convert(pil.mode), dtype=np.uint8)
        out.append(arr[..., None] if arr.ndim == 2 else arr)
    batch = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return batch.to(x.device)
