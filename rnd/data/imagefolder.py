"""An image folder: one sub-folder per class, images of one size (PNG, JPEG, ... via Pillow)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from rnd.data.base import ImageDataset
from rnd.errors import DataError, DataNotFoundError, InputError

Fit = Literal["resize", "crop"]
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".webp")


def fit_image(im: Image.Image, size: tuple[int, int], fit: Fit = "resize") -> Image.Image:
    """`im` at (height, width) `size`: "resize" stretches it (bilinear); "crop" keeps the aspect
    ratio, resizing (bicubic) so that it covers `size` and cutting the centre out."""
    h, w = size
    if fit == "resize":
        return im.resize((w, h), Image.BILINEAR)
    scale = max(h / im.height, w / im.width)
    sw, sh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
    im = im.resize((sw, sh), Image.BICUBIC)
    left, top = (sw - w) // 2, (sh - h) // 2
    return im.crop((left, top, left + w, top + h))


def load_image_folder(
    root: str | Path,
    size: tuple[int, int] | None = None,
    mode: str = "RGB",
    fit: Fit = "resize",
    class_index: Mapping[str, int] | None = None,
    classes: Sequence[str] | None = None,
) -> ImageDataset:
    """Load `root/<class>/<image>`; classes are the sorted sub-folder names.

    Args:
        size: (height, width) to resize to; required when the images differ in size.
        mode: Pillow mode, "RGB" (3 channels) or "L" (1 channel).
        fit: how to reach `size` (`fit_image`): "resize" stretches, "crop" keeps the aspect ratio
            and centre-crops (the ImageNet way).
        class_index: sub-folder name to label, for folders named by a fixed class list (e.g.
            ImageNet class indices); a sub-folder it lacks is an error. Default: the position of
            the name among the sorted sub-folder names.
        classes: the data set's class names, by label, when `class_index` is given (default: none,
            so the class count is the largest label + 1).
    """
    if mode not in ("RGB", "L"):
        raise InputError(f"mode must be 'RGB' (3 channels) or 'L' (1 channel), got {mode!r}")
    if fit not in ("resize", "crop"):
        raise InputError(f"fit must be 'resize' or 'crop', got {fit!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DataNotFoundError(f"{root} holds no class sub-folders")
    if class_index is None:
        index = {name: i for i, name in enumerate(folders)}
        names = folders
    else:
        unknown = [f for f in folders if f not in class_index]
        if unknown:
            raise DataError(
                f"sub-folder(s) {', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''} of {root} "
                "name no known class; rename them to class names of the model, or remove them"
            )
        index = dict(class_index)
        names = list(classes) if classes is not None else []
    arrays, labels = [], []
    for cls in folders:
        label = index[cls]
        for path in sorted((root / cls).iterdir()):
            if path.suffix.lower() not in EXTENSIONS:
                continue
            try:
                with Image.open(path) as im:
                    im = im.convert(mode)
                    if size is not None:
                        im = fit_image(im, size, fit)
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
    return ImageDataset(f"imagefolder:{root}", "all", images, torch.tensor(labels), names)
