"""load_image_folder's `fit` ("resize" stretches, "crop" keeps the aspect ratio) and
`class_index` (folders named by a fixed class list)."""

from __future__ import annotations

import numpy as np
import pytest

from rnd.data import load_image_folder
from rnd.errors import DataError, InputError

Image = pytest.importorskip("PIL.Image")


def _stripes(path) -> None:
    """60 x 20 (w x h): columns 10-49 white, the 10 at each side black."""
    a = np.zeros((20, 60, 3), dtype=np.uint8)
    a[:, 10:50] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def test_crop_keeps_the_centre(tmp_path) -> None:
    _stripes(tmp_path / "a" / "x.png")
    crop = load_image_folder(tmp_path, size=(10, 10), fit="crop").images[0]
    assert crop.shape == (3, 10, 10) and int(crop.min()) >= 250  # only the white middle
    stretched = load_image_folder(tmp_path, size=(10, 10)).images[0]
    assert int(stretched[:, :, 0].max()) == 0 and int(stretched[:, :, 5].min()) == 255


def test_class_index_maps_folder_names(tmp_path) -> None:
    _stripes(tmp_path / "5" / "x.png")
    _stripes(tmp_path / "2" / "y.png")
    names = [str(i) for i in range(8)]
    data = load_image_folder(tmp_path, size=(10, 10), class_index={n: int(n) for n in names}, classes=names)
    assert data.labels.tolist() == [2, 5] and data.classes == names
    with pytest.raises(DataError, match="no known class"):
        load_image_folder(tmp_path, size=(10, 10), class_index={"5": 0})
    with pytest.raises(InputError, match="fit"):
        load_image_folder(tmp_path, fit="squash")  # type: ignore[arg-type]
