"""CIFAR-100, OpenOOD's ImageNet-200 and ImageNet-1K as ID data, read with torchvision's and
pytorch-ood's loaders from tiny copies in their on-disk formats."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.image_data import write_imagenet200, write_imagenet_folders, write_tiny_cifar100
from uniad_plugin.anomalies import is_on_grid
from uniad_plugin.benchmark import ConfigError
from uniad_plugin.benchmark.model_cache import _hash_dataset
from uniad_plugin.data import cifar100_dataset, cifar100_splits, imagenet200_splits, imagenet_splits


@pytest.fixture(autouse=True)
def _own_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def test_cifar100_is_read_in_torchvisions_format(tmp_path):
    root = write_tiny_cifar100(tmp_path, n_train=30, n_test=40)
    x, y = cifar100_dataset(root, train=False).tensors
    raw = pickle.loads((root / "cifar-100-python" / "test").read_bytes())
    expected = torch.from_numpy(raw["data"].reshape(40, 3, 32, 32).astype(np.float32)) / 255
    assert torch.equal(x, expected) and y.tolist() == raw["fine_labels"]
    s = cifar100_splits(root, seed=1, n_test=10, n_attack=5, n_val=5)
    assert s.num_classes == 100 and len(s.train) == 30 and s.input_shape == (3, 32, 32)
    assert (len(s.test), len(s.attack), len(s.val)) == (10, 5, 5)
    with pytest.raises(ConfigError) as info:
        cifar100_splits(tmp_path / "nowhere", n_test=5, n_attack=5, n_val=5)
    message = str(info.value)
    assert "\n" not in message and "CIFAR-100 not found: train, test, meta missing" in message
    assert "cifar-100-python" in message and "download=True" in message


def test_imagenet200_is_read_from_openoods_image_lists(tmp_path):
    root = write_imagenet200(tmp_path / "data", n_train_per_class=4, n_test=30, n_val=4)
    s = imagenet200_splits(root, seed=0, n_test=10, n_attack=6, n_val=4, image_size=64)
    assert s.num_classes == 200 and s.input_shape == (3, 64, 64)
    assert (len(s.train), len(s.test), len(s.attack), len(s.val)) == (12, 10, 6, 4)
    assert is_on_grid(s.test.tensors[0], 255) and s.test.tensors[0].max() <= 1
    # the labels are the lists' (0..2 in turn); the training set stays on disk, same transform
    listed = (root / "benchmark_imglist" / "imagenet200" / "test_imagenet200.txt").read_text()
    labels = {int(line.split()[1]) for line in listed.splitlines()}
    assert set(s.test.tensors[1].tolist()) <= labels == {0, 1, 2}
    x, y = next(iter(DataLoader(s.train, batch_size=12)))
    assert x.shape == (12, 3, 64, 64) and is_on_grid(x, 255) and y.tolist()[:4] == [0] * 4
    # the default is ImageNet's evaluation transform, 224 pixels
    full = imagenet200_splits(root, n_test=2, n_attack=1, n_val=1)
    assert full.input_shape == (3, 224, 224)
    val = imagenet200_splits(root, seed=0, n_test=10, n_attack=3, n_val=2, part="validation")
    mine = {
        tuple(r.tolist()) for r in torch.cat([s.test.tensors[0], s.attack.tensors[0]]).flatten(1)
    }
    assert not mine & {tuple(r.tolist()) for r in val.test.tensors[0].flatten(1)}


def test_missing_imagenet200_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        imagenet200_splits(tmp_path, n_test=2, n_attack=1, n_val=1)
    message = str(info.value)
    assert "\n" not in message and message.startswith("ImageNet-200 not found: OpenOOD image list")
    assert "train_imagenet200.txt" in message and "download=True" in message
    root = write_imagenet200(tmp_path / "data", n_train_per_class=2, n_test=8, n_val=2)
    for image in (root / "imagenet_1k" / "val").iterdir():
        image.unlink()
    with pytest.raises(ConfigError) as info:
        imagenet200_splits(root, n_test=2, n_attack=1, n_val=1)
    message = str(info.value)
    assert "4 of 4 chosen test images missing" in message and "imagenet_1k" in message
    assert "cannot be downloaded" in message


def test_imagenet_is_read_from_torchvisions_folder_layout(tmp_path):
    root = write_imagenet_folders(tmp_path, n_train_per_class=2, n_val_per_class=5)
    s = imagenet_splits(root, seed=0, n_test=6, n_attack=4, n_val=3, image_size=32)
    assert s.num_classes == 3 and s.input_shape == (3, 32, 32) and len(s.train) == 6
    assert (len(s.test), len(s.attack), len(s.val)) == (6, 4, 3)
    assert is_on_grid(s.attack.tensors[0], 255)
    with pytest.raises(ConfigError, match="expected 15 images|<= 15"):
        imagenet_splits(root, n_test=10, n_attack=4, n_val=3)
    with pytest.raises(ConfigError) as info:
        imagenet_splits(tmp_path / "nowhere", n_test=2, n_attack=1, n_val=1)
    assert "ImageNet not found: no folder" in str(info.value)
    assert "torchvision's ImageNet layout" in str(info.value)


def test_the_model_cache_key_of_an_image_set_is_its_files(tmp_path):
    import hashlib

    root = write_imagenet200(tmp_path / "data", n_train_per_class=2, n_test=4, n_val=2)
    s = imagenet200_splits(root, n_test=2, n_attack=1, n_val=1, image_size=32)

    def key(data):
        h = hashlib.sha256()
        _hash_dataset(h, data)
        return h.hexdigest()

    assert key(s.train) == key(
        imagenet200_splits(root, n_test=2, n_attack=1, n_val=1, image_size=32).train
    )
    assert key(s.train) != key(imagenet200_splits(root, n_test=2, n_attack=1, n_val=1).train)
