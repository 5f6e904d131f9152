"""``uniad`` end to end (fast mode, a tiny model) on CIFAR-10, CIFAR-100, ImageNet-200 and
ImageNet with OpenOOD's near- and far-OOD sets, all from tiny copies on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.image_data import (
    write_imagenet200,
    write_imagenet_folders,
    write_openood_sets,
    write_tiny_cifar10,
    write_tiny_cifar100,
)
from uniad_plugin import cli

#: the small sizes of the end-to-end runs on tiny image data
_DETECTORS = ("UniformDetector", "MaxSoftmax")
_TINY = ["--fast", "--attacks", "fgsm@0.3"]
_TINY += ["--n-attack", "10", "--n-noise", "10", "--n-ood", "5", "--no-sanity", "--no-plots"]
_TINY += ["--quiet", "--n-test", "20"]
_ARCH = "tests.tiny_models:tiny_rgb_cnn"
#: the tiny copies of CIFAR-100 and ImageNet-200 hold 10 and 3 of their classes; UniformDetector
#: wants training images of every class, so those runs use two detectors that do not
_FEW_CLASSES = ("MaxSoftmax", "EnergyBased")


@pytest.fixture(autouse=True)
def _own_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def _run(args: list, tmp_path: Path, capsys) -> tuple[int, str, str]:
    out = ["--out", tmp_path / "o", "--cache-dir", tmp_path / "c"]
    code = cli.main([str(a) for a in [*args, *out]])
    stdout, stderr = capsys.readouterr()
    return code, stdout, stderr


def _results(tmp_path: Path) -> tuple[dict, dict]:
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    rows = {(r["Detector"], r["Class"], r["Dataset"]): r for r in data["rows"]}
    return rows, data["meta"]


def _check_report(
    rows: dict, meta: dict, near: list[str], far: list[str], out: str, dets=_DETECTORS
) -> None:
    """Every OpenOOD set scored in its group, a mean per group, and the AD and NS rows."""
    assert [d["status"] for d in meta["detectors"]] == ["ok"] * len(dets)
    for det in dets:
        for name in [f"{n} (near)" for n in near] + [f"{n} (far)" for n in far]:
            assert rows[(det, "OOD", name)]["AUROC"] is not None, name
        for summary in ("near-OOD mean", "far-OOD mean", "mean"):
            assert rows[(det, "OOD", summary)]["AUROC"] is not None, summary
        assert rows[(det, "AD", "fgsm@0.3")]["Error"] is None
        assert rows[(det, "NS", "mean")]["AUROC"] is not None
    ud = {k[2]: r for k, r in rows.items() if k[0] == dets[0] and k[1] == "OOD"}
    near_sets = [ud[f"{n} (near)"]["AUROC"] for n in near]
    assert ud["near-OOD mean"]["AUROC"] == pytest.approx(sum(near_sets) / len(near_sets))
    assert ud["far-OOD mean"]["N"] == sum(ud[f"{n} (far)"]["N"] for n in far)
    groups = {a["name"]: a["info"].get("group") for a in meta["anomaly_sets"]}
    assert all(groups[f"{n} (near)"] == "near" for n in near)
    assert "near-OOD mean" in out and "far-OOD mean" in out and "gaussian" in out


@pytest.mark.slow
def test_cifar10_with_openood_near_and_far_sets(tmp_path, capsys):
    root = write_tiny_cifar10(tmp_path / "data", n_per_batch=20, n_test=300)
    write_openood_sets(root, "cifar10", n_per_set=12)
    code, out, err = _run(
        [
            "--dataset",
            "cifar10",
            "--data-root",
            root,
            *_TINY,
            "--arch",
            _ARCH,
            "--train",
            "--detectors",
            *_DETECTORS,
        ],
        tmp_path,
        capsys,
    )
    assert code == 0, err
    rows, meta = _results(tmp_path)
    near, far = ["CIFAR100", "TinyImageNet"], ["MNIST", "SVHN", "Textures", "Places365"]
    _check_report(rows, meta, near, far, out)
    assert rows[("MaxSoftmax", "OOD", "letters")]["N"] == 5  # the offline sets stay
    assert not [n for n in meta["notes"] if "OpenOOD" in n]


@pytest.mark.slow
def test_cifar10_with_a_torchvision_resnet18_and_openood_sets(tmp_path, capsys):
    """End to end with a user's weights: uniad --dataset cifar10 --data-root DIR --arch torchvision:resnet18
    --model W.pt, with near-OOD, far-OOD, AD and NS in the report."""
    from tests.tiny_models import fitted_resnet18
    from uniad_plugin.data import cifar10_dataset

    root = write_tiny_cifar10(tmp_path / "data", n_per_batch=20, n_test=300)
    write_openood_sets(root, "cifar10", n_per_set=12)
    fitted_resnet18(*cifar10_dataset(root, train=True).tensors, 10, tmp_path / "w.pt")
    args = ["--dataset", "cifar10", "--data-root", root, *_TINY, "--detectors", *_DETECTORS]
    args += ["--arch", "torchvision:resnet18", "--model", tmp_path / "w.pt"]
    code, out, err = _run(args, tmp_path, capsys)
    assert code == 0, err
    rows, meta = _results(tmp_path)
    assert meta["model"] == {"source": str(tmp_path / "w.pt"), "arch": "torchvision:resnet18"}
    near, far = ["CIFAR100", "TinyImageNet"], ["MNIST", "SVHN", "Textures", "Places365"]
    _check_report(rows, meta, near, far, out)


def test_missing_openood_files_a_note_by_default_an_error_when_named(tmp_path, capsys):
    root = write_tiny_cifar10(tmp_path / "data", n_per_batch=20, n_test=300)
    args = ["--dataset", "cifar10", "--data-root", root, *_TINY, "--attacks", "--noise"]
    args += ["--train", "--arch", _ARCH, "--detectors", "MaxSoftmax"]
    code, out, err = _run(args, tmp_path, capsys)
    assert code == 0, err
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert len(notes) == 2 and "CIFAR100 (near)" in notes[0] and "--download" in notes[0]
    assert "OpenOOD sets left out: FileNotFoundError: OpenOOD image list" in notes[1]
    code, out, err = _run([*args, "--ood", "openood_far"], tmp_path, capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cannot load the OOD set 'openood:cifar10:mnist'" in lines[0]
    assert "test_mnist.txt not found" in lines[0] and "--download" in lines[0]
    assert str(root / "benchmark_imglist") in lines[0]


@pytest.mark.slow
def test_cifar100_end_to_end(tmp_path, capsys):
    root = write_tiny_cifar100(tmp_path / "data", n_train=100, n_test=300)
    write_openood_sets(root, "cifar100", n_per_set=12)
    args = ["--dataset", "cifar100", "--data-root", root, *_TINY, "--epochs", "20"]
    args += ["--train", "--arch", f"{_ARCH}_100", "--detectors", *_FEW_CLASSES]
    code, out, err = _run([*args, "--ood", "openood"], tmp_path, capsys)
    assert code == 0, err
    rows, meta = _results(tmp_path)
    assert meta["num_classes"] == 100 and meta["input_shape"] == [3, 32, 32]
    near, far = ["CIFAR10", "TinyImageNet"], ["MNIST", "SVHN", "Textures", "Places365"]
    _check_report(rows, meta, near, far, out, _FEW_CLASSES)


@pytest.mark.slow
def test_imagenet200_end_to_end(tmp_path, capsys):
    """At 64 pixels to stay fast (the loader's default of 224 is checked in test_data_openood)."""
    root = write_imagenet200(tmp_path / "data", n_train_per_class=8, n_test=170, n_val=4)
    write_openood_sets(root, "imagenet200", n_per_set=12)
    args = ["--dataset", "imagenet200", "--data-root", root, *_TINY, "--epochs", "10"]
    args += [
        "--train",
        "--arch",
        f"{_ARCH}_200",
        "--detectors",
        *_FEW_CLASSES,
        "--image-size",
        "64",
    ]
    code, out, err = _run([*args, "--ood", "openood"], tmp_path, capsys)
    assert code == 0, err
    rows, meta = _results(tmp_path)
    assert meta["num_classes"] == 200 and meta["input_shape"] == [3, 64, 64]
    assert meta["n_train"] == 24 and meta["n_test"] == 20
    near, far = ["SSBHard", "NINCO"], ["iNaturalist", "Textures", "OpenImagesO"]
    _check_report(rows, meta, near, far, out, _FEW_CLASSES)


@pytest.mark.slow
def test_imagenet_folders_end_to_end(tmp_path, capsys):
    root = write_imagenet_folders(tmp_path / "data", n_train_per_class=10, n_val_per_class=57)
    write_openood_sets(root, "imagenet", n_per_set=12)
    args = ["--dataset", "imagenet", "--data-root", root, *_TINY, "--epochs", "20"]
    args += ["--train", "--arch", f"{_ARCH}_3", "--detectors", *_DETECTORS]
    code, out, err = _run([*args, "--ood", "openood", "--image-size", "64"], tmp_path, capsys)
    assert code == 0, err
    rows, meta = _results(tmp_path)
    assert meta["num_classes"] == 3 and meta["input_shape"] == [3, 64, 64]
    near, far = ["SSBHard", "NINCO"], ["iNaturalist", "Textures", "OpenImagesO"]
    _check_report(rows, meta, near, far, out)
