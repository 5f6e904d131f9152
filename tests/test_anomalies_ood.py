"""Tests of uniad_plugin.anomalies.ood and .real: offline and real OOD sets on the grid."""

from __future__ import annotations

import os
import pickle
import string
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uniad_plugin.anomalies import (
    FONT_SPLITS,
    OOD_DATASETS,
    PHOTO_SPLITS,
    OODSet,
    font_letters,
    is_on_grid,
    load_ood,
    photo_patches,
    to_grid,
)
from uniad_plugin.anomalies.ood import FONT_FILES, SPLITS

# --------------------------------------------------------------------------- offline OOD


@pytest.mark.parametrize("make,name", [(font_letters, "letters"), (photo_patches, "photos")])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 20, 12)])
def test_offline_ood_sets(make, name, shape):
    s = make(200, shape, seed=0)
    assert isinstance(s, OODSet) and s.kind == "OOD" and s.name == name
    assert s.x.shape == (200, *shape) and s.x.dtype == torch.float32
    assert s.x.min() >= 0 and s.x.max() <= 1 and s[5][1] == -1
    flat = s.x.flatten(1)
    contrast = flat.amax(1) - flat.amin(1)
    if name == "letters":  # white glyph on black
        assert torch.allclose(contrast, torch.ones(200))
    else:  # smooth regions (sky) give low-contrast crops, but none is constant
        assert (contrast > 0.01).all() and (contrast > 0.1).float().mean() > 0.8
    assert is_on_grid(s.x, 255) and s.info["grid_levels"] == 255
    # images differ from each other
    assert torch.unique(flat, dim=0).shape[0] == 200
    assert torch.equal(s.x, make(200, shape, seed=0).x)
    assert not torch.equal(s.x, make(200, shape, seed=1).x)
    if shape[0] == 3:
        gray = make(200, (1, *shape[1:]), seed=0).x
        if name == "letters":  # white glyphs: identical channels
            assert torch.equal(s.x, gray.expand_as(s.x))
        else:  # RGB photos become luminance
            luma = torch.einsum("nchw,c->nhw", s.x, torch.tensor([0.299, 0.587, 0.114]))
            # both rounded onto the 1/255 grid: one step apart at most
            assert torch.allclose(luma.unsqueeze(1), gray, atol=1 / 255 + 1e-5)
    json_ok = s.info  # JSON-serialisable, checked by AnomalySet
    assert json_ok["n"] == 200


def test_letters_look_like_mnist():
    s = font_letters(300, (1, 28, 28), seed=0)
    assert len(s.chars) == 300 and set(s.chars) <= set(string.ascii_letters)
    assert len(set(s.chars)) > 40
    x = s.x[:, 0]
    assert torch.allclose(x.amax((1, 2)), torch.ones(300))  # white glyph
    border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], 1)
    assert border.mean() < 0.05  # on black, glyph inside the frame
    assert 0.05 < x.mean() < 0.4  # a stroke, not a blob
    assert len(s.info["fonts"]) >= 10


@pytest.mark.parametrize("make", [font_letters, photo_patches])
@pytest.mark.parametrize("levels", [255, 16])
def test_offline_ood_on_the_grid(make, levels):
    for split in SPLITS:
        s = make(100, (3, 12, 10), seed=0, split=split, levels=levels)
        assert is_on_grid(s.x, levels) and s.info["grid_levels"] == levels
        assert s.info["split"] == split and "continuous" not in s.name
    c = make(100, (1, 12, 10), seed=0, levels=None)
    assert c.name.endswith(" (continuous)") and c.info["grid_levels"] is None
    assert not is_on_grid(c.x, 255)
    # the grid set is the continuous one rounded
    assert torch.equal(
        make(100, (1, 12, 10), seed=0, levels=levels).x, to_grid(c.x, levels, (0, 1))
    )


def test_report_and_validation_splits_are_disjoint():
    assert set(FONT_SPLITS) == set(PHOTO_SPLITS) == set(SPLITS) == {"report", "validation"}
    assert not set(FONT_SPLITS["report"]) & set(FONT_SPLITS["validation"])
    assert set(FONT_SPLITS["report"]) | set(FONT_SPLITS["validation"]) == set(FONT_FILES)
    assert len(FONT_SPLITS["report"]) > len(FONT_SPLITS["validation"]) > 0
    assert not set(PHOTO_SPLITS["report"]) & set(PHOTO_SPLITS["validation"])
    assert len(PHOTO_SPLITS["report"]) > len(PHOTO_SPLITS["validation"]) > 0
    report, val = font_letters(50, (1, 16, 16)), font_letters(50, (1, 16, 16), split="validation")
    assert report.info["split"] == "report" and val.info["split"] == "validation"
    assert not set(report.info["fonts"]) & set(val.info["fonts"]) and val.info["fonts"]
    assert not torch.equal(report.x, val.x)
    report, val = photo_patches(50, (3, 8, 8)), photo_patches(50, (3, 8, 8), split="validation")
    assert not set(report.info["photos"]) & set(val.info["photos"]) and val.info["photos"]
    assert set(val.info["photos"]) <= set(PHOTO_SPLITS["validation"])
    for make in (font_letters, photo_patches):
        with pytest.raises(ValueError, match="expected split"):
            make(3, (1, 8, 8), split="test")


def test_offline_ood_bad_inputs():
    for make in (font_letters, photo_patches):
        with pytest.raises(ValueError, match="channels"):
            make(3, (2, 8, 8))
        with pytest.raises(ValueError, match=r"\(C, H, W\)"):
            make(3, (8, 8))
        with pytest.raises(ValueError, match="n"):
            make(0, (1, 8, 8))


# --------------------------------------------------------------------------- real OOD loaders


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format of the MNIST family (big-endian header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist_like(root: Path, folder: str, n_test: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    raw = root / folder / "raw"
    _write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (4, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte", rng.integers(0, 10, 4))
    _write_idx(raw / "t10k-images-idx3-ubyte", test)
    _write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test))
    return test


def _expected(images: np.ndarray, shape) -> torch.Tensor:
    """Reference conversion: (N, C, h, w) uint8 -> resized float (N, C', H, W)."""
    x = torch.from_numpy(images).float() / 255
    x = F.interpolate(x, size=shape[1:], mode="bilinear", antialias=True, align_corners=False)
    x = x.clamp(0, 1)
    if shape[0] == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if shape[0] == 1 and x.shape[1] == 3:
        x = torch.einsum("nchw,c->nhw", x, torch.tensor([0.299, 0.587, 0.114])).unsqueeze(1)
    return (x * 255).round() / 255  # back onto the 8-bit grid


@pytest.mark.parametrize("name,folder", [("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_load_mnist_like_from_files(tmp_path, name, folder):
    test = _fake_mnist_like(tmp_path, folder)
    s = load_ood(name, tmp_path, (1, 8, 8))
    assert isinstance(s, OODSet) and s.kind == "OOD" and s.name == name
    assert s.x.shape == (30, 1, 8, 8) and s[0][1] == -1
    assert torch.allclose(s.x, _expected(test[:, None], (1, 8, 8)), atol=1e-5)
    assert is_on_grid(s.x, 255) and s.info["grid_levels"] == 255
    assert is_on_grid(load_ood(name, tmp_path, (1, 8, 8), levels=16).x, 16)
    cont = load_ood(name, tmp_path, (1, 8, 8), levels=None)
    assert cont.name == f"{name} (continuous)" and not is_on_grid(cont.x, 255)
    rgb = load_ood(name, str(tmp_path), (3, 28, 28))
    assert torch.allclose(
        rgb.x, torch.from_numpy(test).float()[:, None].expand(-1, 3, -1, -1) / 255
    )
    sub = load_ood(name, tmp_path, (1, 8, 8), n=10, seed=2)
    assert len(sub) == 10 and torch.equal(
        sub.x, load_ood(name, tmp_path, (1, 8, 8), n=10, seed=2).x
    )
    assert not torch.equal(sub.x, load_ood(name, tmp_path, (1, 8, 8), n=10, seed=3).x)
    # the subset is made of rows of the full set
    assert all((s.x.flatten(1) == row).all(1).any() for row in sub.x.flatten(1))
    with pytest.raises(ValueError, match="n <= 30"):
        load_ood(name, tmp_path, (1, 8, 8), n=31)


def test_load_mnist_pads_small_digits_and_reads_train_for_validation(tmp_path):
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    raw = tmp_path / "MNIST" / "raw"
    for stem, images in (("train", train), ("t10k", test)):
        _write_idx(raw / f"{stem}-images-idx3-ubyte", images)
        _write_idx(raw / f"{stem}-labels-idx1-ubyte", rng.integers(0, 10, len(images)))
    s = load_ood("mnist", tmp_path, (3, 32, 32))
    assert s.x.shape == (7, 3, 32, 32) and s.info["split"] == "test"
    # padded with black, 2 pixels on each side, never resized; gray replicated to RGB
    inner = torch.from_numpy(test).float()[:, None].expand(-1, 3, -1, -1) / 255
    assert torch.allclose(s.x[:, :, 2:30, 2:30], inner)
    assert s.x[:, :, :2].eq(0).all() and s.x[:, :, 30:].eq(0).all()
    assert s.x[:, :, :, :2].eq(0).all() and s.x[:, :, :, 30:].eq(0).all()
    # a target smaller than the digits: resized as the other sets
    small = load_ood("mnist", tmp_path, (1, 8, 8))
    assert torch.allclose(small.x, _expected(test[:, None], (1, 8, 8)), atol=1e-5)
    # the validation split reads the training images, never the reported ones
    val = load_ood("mnist", tmp_path, (1, 28, 28), split="validation")
    assert val.info["split"] == "train"
    assert torch.allclose(val.x, torch.from_numpy(train).float()[:, None] / 255)
    with pytest.raises(ValueError, match="expected split 'report' or 'validation'"):
        load_ood("mnist", tmp_path, (1, 28, 28), split="test")
    with pytest.raises(ValueError, match="textures has no training split"):
        load_ood("textures", tmp_path, (3, 32, 32), split="validation")


def test_load_emnist_letters_transposes(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    raw = tmp_path / "EMNIST" / "raw"
    _write_idx(raw / "emnist-letters-test-images-idx3-ubyte", images)
    _write_idx(raw / "emnist-letters-test-labels-idx1-ubyte", rng.integers(1, 27, 6))
    s = load_ood("emnist_letters", tmp_path, (1, 28, 28))
    expected = torch.from_numpy(images).float().transpose(1, 2)[:, None] / 255
    assert torch.allclose(s.x, expected)


def test_load_cifar10_from_pickles(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    # the real files are checked against md5 sums; accept our fake files by existence
    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    test = rng.integers(0, 256, size=(12, 3, 32, 32), dtype=np.uint8)
    for fname, data in [(f"data_batch_{i}", test[:2]) for i in range(1, 6)] + [
        ("test_batch", test)
    ]:
        entry = {"data": data.reshape(len(data), -1), "labels": [0] * len(data)}
        (folder / fname).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    s = load_ood("cifar10", tmp_path, (1, 16, 16))
    assert s.x.shape == (12, 1, 16, 16)
    assert torch.allclose(s.x, _expected(test, (1, 16, 16)), atol=1e-5)
    rgb = load_ood("cifar10", tmp_path, (3, 32, 32))
    assert torch.allclose(rgb.x, torch.from_numpy(test).float() / 255)
    # non-square target: centre crop to the aspect ratio, then resize
    wide = load_ood("cifar10", tmp_path, (3, 8, 16))
    ref = _expected(test[:, :, 8:24, :], (3, 8, 16))
    assert torch.allclose(wide.x, ref, atol=1e-5)


def test_load_ood_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown OOD data set 'mnist2'.*fashion_mnist"):
        load_ood("mnist2", tmp_path, (1, 8, 8))
    for name in OOD_DATASETS:
        with pytest.raises(FileNotFoundError, match="download=True") as err:
            load_ood(name, tmp_path / "nowhere", (1, 8, 8))
        assert str(tmp_path / "nowhere") in str(err.value)
    _fake_mnist_like(tmp_path, "KMNIST")
    with pytest.raises(ValueError, match="channels"):
        load_ood("kmnist", tmp_path, (2, 8, 8))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        load_ood("kmnist", tmp_path, (8, 8))
    with pytest.raises(ValueError, match="n"):
        load_ood("kmnist", tmp_path, (1, 8, 8), n=0)
    # present but broken files: a clear error, not a crash deep inside torchvision
    (tmp_path / "KMNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03")
    with pytest.raises(ValueError, match="could not load the files under root"):
        load_ood("kmnist", tmp_path, (1, 8, 8))


# --------------------------------------------------------------------------- user's image folders


def _flat_folder(root: Path, n: int = 7, size: tuple[int, int] = (48, 40)) -> Path:
    """``root/<i>.png`` (and a JPEG, a text file and a hidden file, which are no images)."""
    from PIL import Image

    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    for i in range(n):
        img = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(img).save(root / (f"{i}.png" if i else "0.JPG"))
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    return root


@pytest.mark.parametrize("shape,levels", [((3, 32, 32), 255), ((1, 8, 8), 16)])
def test_image_folder_flat_and_imagefolder_layouts(tmp_path, shape, levels):
    from tests.image_data import write_image_folder
    from uniad_plugin.anomalies import load_image_folder
    from uniad_plugin.benchmark import load_ood_sets
    from uniad_plugin.benchmark.anomaly_sets import check_ood_names

    flat = _flat_folder(tmp_path / "my_photos")
    tree = write_image_folder(tmp_path / "ood_tree", classes=("a", "b", "c"), n_per_class=3)
    s = load_image_folder(flat, shape, levels=levels)
    assert s.kind == "OOD" and s.name == "my_photos" and s.x.shape == (7, *shape)
    assert is_on_grid(s.x, levels) and s.x.min() >= 0 and s.x.max() <= 1
    assert s.info["grid_levels"] == levels and s.info["n_total"] == 7
    t = load_image_folder(tree, shape, n=5, seed=1, levels=levels)
    assert t.name == "ood_tree" and len(t) == 5 and t.info["n_total"] == 9
    assert len(load_image_folder(tree, shape, n=50)) == 9  # all there are
    # through the command's keys: paths become folder:<absolute path>, named after the folder
    keys = check_ood_names(["letters", str(flat), f"folder:{tree}"], "cifar10")
    assert keys == ["letters", f"folder:{flat.resolve()}", f"folder:{tree.resolve()}"]
    sets, notes = load_ood_sets(keys, shape, n=4, levels=levels)
    assert [a.name for a in sets] == ["letters", "my_photos", "ood_tree"] and notes == []
    assert all(len(a) == 4 and is_on_grid(a.x, levels) for a in sets)


def test_image_folder_is_read_as_the_id_images(tmp_path):
    """An RGB 40x48 image: resized (shorter side) and centre-cropped as the ID folder data."""
    from tests.image_data import write_image_folder
    from uniad_plugin.anomalies import load_image_folder
    from uniad_plugin.data import image_folder

    tree = write_image_folder(tmp_path / "imgs", n_per_class=2)
    as_id, _ = image_folder(tree, 16)
    assert torch.equal(load_image_folder(tree, (3, 16, 16)).x, as_id.tensors[0])


def test_image_folder_errors(tmp_path):
    from uniad_plugin.anomalies import load_image_folder
    from uniad_plugin.benchmark import ConfigError
    from uniad_plugin.benchmark.anomaly_sets import check_ood_names

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files in the OOD folder"):
        load_image_folder(tmp_path / "empty", (3, 8, 8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere", (3, 8, 8))
    with pytest.raises(ConfigError, match="no image files in the OOD folder"):
        check_ood_names([str(tmp_path / "empty")], "digits")
    with pytest.raises(ConfigError, match="OOD folder '.*nowhere' does not exist"):
        check_ood_names([str(tmp_path / "nowhere")], "digits")
    with pytest.raises(ConfigError, match="unknown OOD set 'nowhere'"):
        check_ood_names(["nowhere"], "digits")  # a bare word that is no folder: a set name
    letters = _flat_folder(tmp_path / "letters")
    with pytest.raises(ConfigError, match="two OOD sets would be named 'letters'"):
        check_ood_names(["letters", str(letters)], "digits")
