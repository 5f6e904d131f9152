"""CIFAR-10 and ImageFolder data (read through torchvision from tiny copies written by the
tests), ``torchvision:NAME`` architectures and the :class:`Normalized` wrapper."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tests.image_data import write_image_folder, write_tiny_cifar10
from uniad_plugin.benchmark import ConfigError
from uniad_plugin.benchmark.model_cache import load_model, resolve_architecture
from uniad_plugin.data import cifar10_dataset, cifar10_splits, folder_splits, image_folder
from uniad_plugin.models import Normalized, resnet_cifar


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return write_tiny_cifar10(tmp_path_factory.mktemp("cifar"), n_per_batch=8, n_test=60)


def test_cifar10_is_read_in_torchvisions_format(cifar_root):
    train = cifar10_dataset(cifar_root, train=True)
    x, y = cifar10_dataset(cifar_root, train=False).tensors
    assert train.tensors[0].shape == (40, 3, 32, 32) and x.shape == (60, 3, 32, 32)
    raw = pickle.loads((cifar_root / "cifar-10-batches-py" / "test_batch").read_bytes())
    expected = torch.from_numpy(raw["data"].reshape(60, 3, 32, 32).astype(np.float32)) / 255
    assert torch.equal(x, expected)  # channel order kept, values on the 8-bit grid
    assert torch.equal(x * 255, (x * 255).round())
    assert y.tolist() == raw["labels"]


def test_cifar10_splits_are_disjoint_seeded_parts_of_the_test_set(cifar_root):
    s = cifar10_splits(cifar_root, seed=1, n_test=10, n_attack=5, n_val=5)
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10 and len(s.train) == 40
    assert (len(s.test), len(s.attack), len(s.val)) == (10, 5, 5)
    again = cifar10_splits(cifar_root, seed=1, n_test=10, n_attack=5, n_val=5)
    assert torch.equal(s.test.tensors[0], again.test.tensors[0])
    val = cifar10_splits(cifar_root, seed=1, n_test=10, n_attack=5, n_val=5, part="validation")
    rows = {tuple(t.flatten()[:64].tolist()) for t in s.test.tensors[0]}
    assert not rows & {tuple(t.flatten()[:64].tolist()) for t in val.test.tensors[0]}
    with pytest.raises(ConfigError, match="<= 30"):
        cifar10_splits(cifar_root, n_test=20, n_attack=5, n_val=6, part="validation")


def test_missing_cifar10_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        cifar10_splits(tmp_path, n_test=5, n_attack=5, n_val=5)
    message = str(info.value)
    assert "\n" not in message
    assert "CIFAR-10 not found: data_batch_1" in message
    assert (
        str(tmp_path / "cifar-10-batches-py") in message
        and "download=True" in message
        and "root=DIR" in message
    )


def test_image_folder_resizes_onto_the_8bit_grid(tmp_path):
    write_image_folder(tmp_path / "train", ("a", "b", "c"), n_per_class=2)
    data, classes = image_folder(tmp_path / "train", image_size=16)
    assert classes == ["a", "b", "c"]
    x, y = data.tensors
    assert x.shape == (6, 3, 16, 16) and y.tolist() == [0, 0, 1, 1, 2, 2]
    assert 0 <= x.min() and x.max() <= 1 and torch.equal(x * 255, (x * 255).round())


def test_folder_splits_divide_the_test_folder(tmp_path):
    write_image_folder(tmp_path / "train", n_per_class=3)
    write_image_folder(tmp_path / "test", n_per_class=6, seed=1)
    s = folder_splits(tmp_path / "train", tmp_path / "test", seed=0)
    assert s.num_classes == 2 and len(s.train) == 6 and s.input_shape == (3, 32, 32)
    assert (len(s.test), len(s.attack), len(s.val)) == (6, 3, 3)


def test_folder_errors_say_what_is_wrong(tmp_path):
    write_image_folder(tmp_path / "train", ("a", "b"), n_per_class=2)
    write_image_folder(tmp_path / "other", ("a", "c"), n_per_class=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="does not exist"):
        folder_splits(tmp_path / "nowhere", tmp_path / "train")
    with pytest.raises(ConfigError, match="no images in"):
        folder_splits(tmp_path / "train", tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"class folders .* differ"):
        folder_splits(tmp_path / "train", tmp_path / "other")


def test_unknown_torchvision_model_is_a_config_error():
    with pytest.raises(ConfigError, match="torchvision has no model 'resnet_nope'"):
        resolve_architecture("torchvision:resnet_nope")


def test_torchvision_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    net = resolve_architecture("torchvision:resnet18", num_classes=3)()
    assert net.fc.out_features == 3
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    loaded = load_model(tmp_path / "r18.pt", "torchvision:resnet18", num_classes=3)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))
    with pytest.raises(ConfigError, match="do not fit"):
        load_model(tmp_path / "r18.pt", "torchvision:resnet18", num_classes=10)


def test_normalized_puts_the_model_behind_its_normalisation():
    torch.manual_seed(0)
    inner = resnet_cifar(4).eval()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    wrapped = Normalized(inner, mean, std).eval()
    x = torch.rand(2, 3, 32, 32)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), inner((x - m) / s))
    assert all(k.startswith("model.") for k in wrapped.state_dict())  # mean/std come from code
    with pytest.raises(ValueError, match="std > 0"):
        Normalized(inner, mean, (0.2, 0.0, 0.3))
