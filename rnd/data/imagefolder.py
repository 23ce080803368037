"""An image folder: one sub-folder per class, images of one size (PNG, JPEG, ... via Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rnd.data.base import ImageDataset
from rnd.errors import DataError, DataNotFoundError, InputError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".webp")


def load_image_folder(
    root: str | Path, size: tuple[int, int] | None = None, mode: str = "RGB"
) -> ImageDataset:
    """Load `root/<class>/<image>`; classes are the sorted sub-folder names.

    Args:
        size: (height, width) to resize to; required when the images differ in size.
        mode: Pillow mode, "RGB" (3 channels) or "L" (1 channel).
    """
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError("image folders need Pillow: pip install 'rnd[dev]' or pillow") from exc
    if mode not in ("RGB", "L"):
        raise InputError(f"mode must be 'RGB' (3 channels) or 'L' (1 channel), got {mode!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataNotFoundError(f"{root} holds no class sub-folders")
    arrays, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).iterdir()):
            if path.suffix.lower() not in EXTENSIONS:
                continue
            try:
                with Image.open(path) as im:
                    im = im.convert(mode)
                    if size is not None:
                        im = im.resize((size[1], size[0]), Image.BILINEAR)
                    arr = np.asarray(im, dtype=np.uint8)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                # UnidentifiedImageError and "image file is truncated" are OSErrors
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DataError(
                    f"cannot read image {path} ({reason}); remove or replace the file, or give it "
                    f"an extension other than {', '.join(EXTENSIONS)} so that it is skipped"
                ) from exc
            arrays.append(arr[..., None] if arr.ndim == 2 else arr)
            labels.append(label)
    if not arrays:
        raise DataNotFoundError(f"no images with extensions {EXTENSIONS} under {root}")
    shapes = sorted({a.shape[:2] for a in arrays})
    if len(shapes) > 1:
        sizes = ", ".join(f"{h}x{w}" for h, w in shapes[:3]) + (", ..." if len(shapes) > 3 else "")
        raise InputError(
            f"images under {root} differ in size ({sizes}); resize them to the model's input size, or "
            "in Python call load_image_folder(root, size=(height, width))"
        )
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageDataset(f"imagefolder:{root}", "all", images, torch.tensor(labels), classes)
