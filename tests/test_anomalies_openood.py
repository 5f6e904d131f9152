"""OpenOOD v1.5's near- and far-OOD sets, read with pytorch-ood's loaders from tiny copies in
OpenOOD's format (image lists and image folders written by the tests)."""

from __future__ import annotations

import pytest
import torch
from pytorch_ood.benchmark.img import CIFAR10_OpenOOD, ImageNet200_OpenOOD

from tests.image_data import write_openood_sets
from uniad_plugin._images import eval_transform
from uniad_plugin.anomalies import AnomalySet, is_on_grid, load_openood
from uniad_plugin.anomalies.openood import expand_openood_names, openood_specs
from uniad_plugin.benchmark import ConfigError
from uniad_plugin.benchmark.anomaly_sets import check_ood_names, load_ood_sets

_SHAPE = (3, 32, 32)


@pytest.fixture(autouse=True)
def _own_torch_home(tmp_path, monkeypatch):
    """pytorch-ood's cache of image lists (under torch.hub's folder) in the test's own folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture
def cifar_tree(tmp_path):
    return write_openood_sets(tmp_path / "data", "cifar10", n_per_set=12)


def test_the_sets_and_groups_are_pytorch_oods():
    specs = openood_specs("cifar10")
    assert [s.name for s in specs] == [n for n, _ in CIFAR10_OpenOOD._ood_imglists]
    assert [s.name for s in specs if s.group == "near"] == CIFAR10_OpenOOD._near_ood
    assert [s.name for s in specs if s.group == "far"] == CIFAR10_OpenOOD._far_ood
    near = [s.name for s in openood_specs("imagenet200") if s.group == "near"]
    assert near == ImageNet200_OpenOOD._near_ood == ["SSBHard", "NINCO"]
    assert specs[0].key == "openood:cifar10:cifar100"


def test_short_names_expand_for_the_id_data_set():
    near = expand_openood_names(["openood_near", "letters"], "cifar100")
    assert near == ["openood:cifar100:cifar10", "openood:cifar100:tinyimagenet", "letters"]
    assert len(expand_openood_names(["openood", "openood_far"], "imagenet")) == 5
    assert expand_openood_names(["openood:svhn"], "cifar10") == ["openood:cifar10:svhn"]
    assert check_ood_names(["OpenOOD:cifar10:SVHN"], "folder") == ["openood:cifar10:svhn"]
    with pytest.raises(ValueError, match="CIFAR10_OpenOOD has no OOD set 'ninco'"):
        expand_openood_names(["openood:ninco"], "cifar10")
    with pytest.raises(ConfigError, match="needs an ID data set with an OpenOOD benchmark"):
        check_ood_names(["openood"], "mnist")
    with pytest.raises(ConfigError, match="unknown OOD set 'openood:nope'"):
        check_ood_names(["openood:nope"], "cifar10")


def test_a_set_is_what_pytorch_oods_benchmark_reads(cifar_tree, tmp_path):
    """The same list, files and transform as pytorch-ood's CIFAR10_OpenOOD (whose lists are
    in its cache): the chosen images are its images, on the grid, labelled -1, grouped."""
    s = load_openood("openood:cifar10:tinyimagenet", cifar_tree, _SHAPE, n=5, seed=3)
    assert isinstance(s, AnomalySet) and s.kind == "OOD" and s.group == "near"
    assert s.name == "TinyImageNet (near)" and s.info["group"] == "near"
    assert s.x.shape == (5, *_SHAPE) and is_on_grid(s.x, 255) and s[0][1] == -1
    cache = tmp_path / "torch_home" / "hub" / "openood_benchmark_imglist"
    cache.mkdir(parents=True)
    (cifar_tree / "benchmark_imglist").rename(cache / "benchmark_imglist")
    bench = CIFAR10_OpenOOD(str(cifar_tree), eval_transform(32), download=False)
    theirs = bench.test_oods[bench.ood_names.index("TinyImageNet")]
    chosen = range(0, len(theirs), 2)  # the report part: the list's even positions
    again = load_openood("openood:cifar10:tinyimagenet", cifar_tree, _SHAPE, n=5, seed=3)
    assert torch.equal(again.x, s.x)  # found in pytorch-ood's cache as well
    expected = torch.stack([theirs[i][0] for i in chosen]).float() / 255
    rows = {tuple(r.tolist()) for r in expected.flatten(1)}
    assert all(tuple(r.tolist()) in rows for r in s.x.flatten(1))


def test_grayscale_and_large_images_take_the_id_shape(cifar_tree, tmp_path):
    mnist = load_openood("openood:cifar10:mnist", cifar_tree, _SHAPE, n=4)
    assert mnist.group == "far" and mnist.x.shape == (4, *_SHAPE)
    assert torch.equal(mnist.x[:, 0], mnist.x[:, 1])  # gray replicated to RGB
    gray = load_openood("openood:cifar10:places365", cifar_tree, (1, 32, 32), n=4, levels=16)
    assert gray.x.shape == (4, 1, 32, 32) and is_on_grid(gray.x, 16)
    big = write_openood_sets(tmp_path / "big", "imagenet200", n_per_set=3, only=("NINCO",))
    ninco = load_openood("openood:imagenet200:ninco", big, (3, 64, 64))
    assert ninco.x.shape == (2, 3, 64, 64) and ninco.name == "NINCO (near)"
    cont = load_openood("openood:imagenet200:ninco", big, (3, 64, 64), levels=None)
    assert cont.name == "NINCO (near) (continuous)"


def test_parts_are_disjoint_and_the_subset_is_seeded(cifar_tree):
    def rows(s):
        return {tuple(r.tolist()) for r in s.x.flatten(1)}

    key = "openood:cifar10:svhn"
    report = load_openood(key, cifar_tree, _SHAPE, n=4, seed=0)
    assert torch.equal(report.x, load_openood(key, cifar_tree, _SHAPE, n=4, seed=0).x)
    assert not torch.equal(report.x, load_openood(key, cifar_tree, _SHAPE, n=4, seed=1).x)
    validation = load_openood(key, cifar_tree, _SHAPE, n=6, seed=5, split="validation")
    assert len(validation) == 6 and not rows(report) & rows(validation)
    assert len(load_openood(key, cifar_tree, _SHAPE, n=100)) == 6  # at most the part


def test_missing_files_are_one_clear_line(cifar_tree, tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_openood("openood:cifar100:svhn", cifar_tree, _SHAPE)
    message = str(info.value)
    assert "\n" not in message and "image list cifar100/test_svhn.txt not found" in message
    assert str(cifar_tree / "benchmark_imglist") in message
    assert "openood_benchmark_imglist" in message and "pass download=True" in message
    for image in (cifar_tree / "svhn" / "test").iterdir():
        image.unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_openood("openood:cifar10:svhn", cifar_tree, _SHAPE, n=3)
    message = str(info.value)
    assert "SVHN (far-OOD of CIFAR10_OpenOOD): 3 of 3 listed images missing" in message
    assert str(cifar_tree / "svhn" / "test") in message and "download=True" in message


def test_optional_sets_are_left_out_with_one_note(cifar_tree):
    keys = check_ood_names(["openood"], "cifar10")
    for image in (cifar_tree / "mnist" / "test").iterdir():
        image.unlink()
    sets, notes = load_ood_sets(
        ["letters", *keys], _SHAPE, optional=keys, n=3, data_root=cifar_tree
    )
    assert [s.name for s in sets][:2] == ["letters", "CIFAR100 (near)"]
    assert len(sets) == 6 and "MNIST (far)" not in [s.name for s in sets]
    assert len(notes) == 2 and "missing: MNIST (far) not found" in notes[0]
    assert "OpenOOD's image lists and folders" in notes[0] and "download=True" in notes[0]
    assert notes[1].startswith("OpenOOD sets left out: ") and "MNIST" in notes[1]
    with pytest.raises(ConfigError, match="cannot load the OOD set 'openood:cifar10:mnist'"):
        load_ood_sets(keys, _SHAPE, n=3, data_root=cifar_tree)
