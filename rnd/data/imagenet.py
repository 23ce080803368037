"""ImageNet images at 224 x 224: foolbox's 20 labelled samples, and folders of the user's own.

The samples are the JPEG files `foolbox/data/imagenet_<NN>_<label>.jpg` that the foolbox wheel
carries (the `imagenet` extra); only the files are used. The package is found with
`find_spec("foolbox")`, which locates a top-level package without executing its
`__init__` (so foolbox, eagerpy and their imports are never loaded).

Both loaders keep the aspect ratio: the shorter side is resized (bicubic, Pillow) to 224 and the
centre 224 x 224 cut out (`rnd.data.imagefolder.fit_image(..., fit="crop")`); pixels are RGB, as
uint8, returned in [0, 1] by `ImageDataset.get`. The samples are 512 x 512 already centred, so
only one (1024 x 683) is cropped.
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rnd.data.base import ImageDataset
from rnd.data.imagefolder import fit_image, load_image_folder
from rnd.errors import DataError, DataNotFoundError
from rnd.extras import find_spec, install_hint

SIZE = (224, 224)
NUM_CLASSES = 1000


def _class_table() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(WordNet ids, names, all lemmas) by label, from `imagenet_classes.tsv` beside this file."""
    text = importlib.resources.files("rnd.data").joinpath("imagenet_classes.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    if [int(r[0]) for r in rows] != list(range(NUM_CLASSES)):  # pragma: no cover - a broken install
        raise DataError("rnd/data/imagenet_classes.tsv is damaged: reinstall rnd")
    return tuple(r[1] for r in rows), tuple(r[2].split(", ")[0] for r in rows), tuple(r[2] for r in rows)


#: By label (the ILSVRC-2012 order, i.e. sorted WordNet ids): the WordNet id (n01440764, ...),
#: the class name (its first lemma: "tench", ...) and all its lemmas ("tench, Tinca tinca").
#: Two names repeat, as in WordNet: "crane" (134 the bird, 517 the machine) and "maillot" (638, 639).
WNIDS, CLASS_NAMES, LEMMAS = _class_table()
LABEL_OF_WNID = {w: i for i, w in enumerate(WNIDS)}
_SAMPLE = re.compile(r"^imagenet_(\d+)_(\d+)\.(?:jpe?g|png)$")
_WNID = re.compile(r"^n\d{8}$")
HINT = f"{install_hint('imagenet')} (foolbox's wheel carries the 20 samples)"


def samples_folder() -> Path:
    """foolbox's data folder, found without importing foolbox."""
    spec = find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(f"the ImageNet samples are not installed: {HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_imagenet_samples(root: str | Path | None = None) -> ImageDataset:
    """foolbox's 20 labelled ImageNet samples (or those in `root`), 224 x 224 RGB, labels from
    the file names `imagenet_<NN>_<label>.jpg`, in file-name order."""
    folder = Path(root) if root is not None else samples_folder()
    files = sorted(p for p in folder.glob("imagenet_*") if _SAMPLE.match(p.name)) if folder.is_dir() else []
    if not files:
        raise DataNotFoundError(f"no ImageNet samples (imagenet_NN_LABEL.jpg) in {folder}: {HINT}")
    arrays, labels = [], []
    for path in files:
        try:
            with Image.open(path) as im:
                arrays.append(np.asarray(fit_image(im.convert("RGB"), SIZE, "crop"), dtype=np.uint8))
        except OSError as exc:
            raise DataError(f"cannot read ImageNet sample {path} ({exc}); reinstall: {HINT}") from exc
        labels.append(int(_SAMPLE.match(path.name).group(2)))  # type: ignore[union-attr]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageDataset("imagenet-samples", "test", images, torch.tensor(labels), list(CLASS_NAMES))


def load_imagenet_folder(root: str | Path) -> ImageDataset:
    """`root/<class>/<image>` at 224 x 224 (centre crop), with ImageNet labels.

    Sub-folders are named by class index ("0" ... "999", leading zeros allowed) or by WordNet id
    (n01440764, ...; any subset of the 1000, as the ILSVRC-2012 validation folders are), and take
    that class's label (`LABEL_OF_WNID`). Class names are `CLASS_NAMES`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if folders and all(_WNID.match(f) for f in folders):
        unknown = [f for f in folders if f not in LABEL_OF_WNID]
        if unknown:
            raise DataError(
                f"{root} has {len(unknown)} WordNet-id folder(s) that are not ImageNet-1k classes "
                f"({', '.join(unknown[:3])}); remove them or rename them to class indices (0-999)"
            )
        index = {f: LABEL_OF_WNID[f] for f in folders}
    else:
        bad = [f for f in folders if not f.isdigit() or int(f) >= NUM_CLASSES]
        if bad:
            raise DataError(
                f"sub-folder(s) {', '.join(bad[:3])} of {root} are neither ImageNet class indices "
                f"(0-{NUM_CLASSES - 1}) nor ImageNet WordNet ids; rename them"
            )
        index = {f: int(f) for f in folders}
    data = load_image_folder(root, size=SIZE, fit="crop", class_index=index, classes=CLASS_NAMES)
    data.name = f"imagenet-folder:{root}"
    return data
