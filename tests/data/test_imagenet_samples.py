"""foolbox's 20 ImageNet samples (files only, foolbox never imported) and ImageNet-style folders
of the user's own images, at 224 x 224."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from rnd.data import DATASETS, load_dataset
from rnd.data import imagenet as imagenet_data
from rnd.data.imagenet import load_imagenet_folder, load_imagenet_samples
from rnd.errors import DataError, DataNotFoundError, InputError

#: The labels in foolbox 3.3.4's file names imagenet_00_243.jpg ... imagenet_19_305.jpg.
LABELS = [243, 559, 438, 990, 949, 853, 609, 609, 915, 455, 541, 630, 741, 471, 129, 99, 251, 22, 317, 305]


def test_samples_load_with_their_labels() -> None:
    pytest.importorskip("PIL")
    if importlib.util.find_spec("foolbox") is None:
        pytest.skip("foolbox (its data files) not installed: pip install 'rnd-defense[imagenet]'")
    data = load_dataset("imagenet-samples")
    assert "imagenet-samples" in DATASETS
    assert data.images.shape == (20, 3, 224, 224) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == LABELS
    assert data.num_classes == 1000
    x, _ = data.get()
    assert float(x.min()) >= 0 and float(x.max()) <= 1 and float(x.std()) > 0.1


def test_loading_the_samples_does_not_import_foolbox() -> None:
    if importlib.util.find_spec("foolbox") is None:
        pytest.skip("foolbox (its data files) not installed")
    code = (
        "import sys; from rnd.data import load_dataset; d = load_dataset('imagenet-samples'); "
        "assert len(d) == 20; bad = [m for m in sys.modules if m.split('.')[0] in ('foolbox', 'eagerpy')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_samples_say_what_to_install(tmp_path, monkeypatch) -> None:
    with pytest.raises(DataNotFoundError, match=r"pip install 'rnd-defense\[imagenet\]'"):
        load_imagenet_samples(tmp_path)
    monkeypatch.setattr(imagenet_data, "find_spec", lambda name: None)
    with pytest.raises(DataNotFoundError, match=r"pip install 'rnd-defense\[imagenet\]'"):
        load_imagenet_samples()
    with pytest.raises(InputError, match="only a test split"):
        load_dataset("imagenet-samples", "train")


def _save(path, h: int, w: int, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, dtype=np.uint8)).save(path)


def test_folder_of_class_indices_loads_at_224(tmp_path) -> None:
    pytest.importorskip("PIL")
    _save(tmp_path / "7" / "a.png", 300, 500, 10)
    _save(tmp_path / "042" / "b.jpg", 256, 256, 200)
    _save(tmp_path / "042" / "c.png", 100, 90, 90)
    data = load_dataset("imagenet-folder", root=tmp_path)
    assert data.images.shape == (3, 3, 224, 224)
    assert sorted(data.labels.tolist()) == [7, 42, 42]
    assert data.num_classes == 1000 and data.classes[42] == "agama"


def test_class_table_is_imagenet_1k_in_label_order() -> None:
    """Label i is the i-th of the sorted WordNet ids; names are the first WordNet lemma."""
    wnids, names = imagenet_data.WNIDS, imagenet_data.CLASS_NAMES
    assert len(wnids) == len(names) == len(imagenet_data.LEMMAS) == 1000
    assert list(wnids) == sorted(set(wnids)) and all(imagenet_data._WNID.match(w) for w in wnids)
    known = {0: ("n01440764", "tench"), 1: ("n01443537", "goldfish"), 207: ("n02099601", "golden retriever"),
             243: ("n02108422", "bull mastiff"), 409: ("n02708093", "analog clock"),
             999: ("n15075141", "toilet tissue")}  # fmt: skip
    for label, (wnid, name) in known.items():
        assert (wnids[label], names[label]) == (wnid, name)
    assert imagenet_data.LEMMAS[0] == "tench, Tinca tinca"
    assert names[134] == names[517] == "crane" and imagenet_data.LEMMAS[639] == "maillot, tank suit"


def test_folder_of_wordnet_ids(tmp_path) -> None:
    """Any subset of the 1000 ids takes each id's own label; an id outside ImageNet-1k is refused."""
    pytest.importorskip("PIL")
    _save(tmp_path / "some" / "n01443537" / "a.png", 32, 32, 1)  # goldfish, label 1
    _save(tmp_path / "some" / "n15075141" / "b.png", 32, 32, 2)  # toilet tissue, label 999
    _save(tmp_path / "some" / "n15075141" / "c.png", 32, 32, 3)
    data = load_imagenet_folder(tmp_path / "some")
    assert sorted(data.labels.tolist()) == [1, 999, 999]
    assert data.num_classes == 1000 and data.classes[1] == "goldfish"
    _save(tmp_path / "some" / "n00000003" / "a.png", 32, 32, 1)  # a WordNet id, not an ImageNet-1k class
    with pytest.raises(DataError, match=r"not ImageNet-1k classes .*n00000003"):
        load_imagenet_folder(tmp_path / "some")


def test_folder_with_foreign_names_is_refused(tmp_path) -> None:
    pytest.importorskip("PIL")
    _save(tmp_path / "cats" / "a.png", 32, 32, 1)
    with pytest.raises(DataError, match="rename"):
        load_dataset("imagenet-folder", root=tmp_path)
    with pytest.raises(InputError, match="needs root"):
        load_dataset("imagenet-folder")
