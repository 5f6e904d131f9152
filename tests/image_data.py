"""Tiny image data sets on disk for the tests, in the formats the real loaders read: CIFAR-10
and CIFAR-100 in torchvision's own format, ``ImageFolder`` trees, OpenOOD's image lists and
image folders (the near- and far-OOD sets, ImageNet-200) and ImageNet in torchvision's folder
layout. ID images of class ``k`` are a flat colour of the class plus seeded noise, so a
classifier separates them after a few steps; OOD images are noisy stripes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

#: one RGB colour per class (ten classes)
_COLOURS = np.array(
    [[r, g, b] for r in (40, 215) for g in (40, 215) for b in (40, 215)]
    + [[128] * 3, [128, 40, 215]],
    np.int16,
)


def class_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 images ``(N, size, size, 3)``: the colour of each label plus noise."""
    base = _COLOURS[labels % len(_COLOURS)][:, None, None, :]
    noise = rng.integers(-20, 21, size=(len(labels), size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_tiny_cifar10(root: Path, n_per_batch: int = 40, n_test: int = 300, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` as torchvision writes it (pickled dicts with ``data``, uint8
    ``(N, 3072)`` in CHW order, and ``labels``; ``batches.meta`` with ``label_names``), with
    all ten labels in turn; returns ``root``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_per_batch
        labels = np.arange(n) % 10
        data = class_images(labels, 32, rng).transpose(0, 3, 1, 2).reshape(n, 3072)
        entry = {"batch_label": name, "data": data, "labels": labels.tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"]}  # fmt: skip
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return root


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog"),
    n_per_class: int = 6,
    seed: int = 0,
    suffix: str = ".png",
) -> Path:
    """``root/<class>/<i><suffix>``: ``n_per_class`` RGB images (PNG, or JPEG for ``.JPEG``) of
    40x48 pixels per class (not square, so that resizing and cropping are exercised); returns
    ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        images = class_images(np.full(n_per_class, k), 48, rng)[:, :40]
        for i, img in enumerate(images):
            Image.fromarray(img).save(root / name / f"{i}{suffix}")
    return root


def write_tiny_cifar100(root: Path, n_train: int = 100, n_test: int = 300, seed: int = 0) -> Path:
    """``root/cifar-100-python`` as torchvision writes it (pickled dicts ``train`` and ``test``
    with ``data``, uint8 ``(N, 3072)`` in CHW order, ``fine_labels`` and ``coarse_labels``;
    ``meta`` with the 100 ``fine_label_names``). The images use the fine labels 0-9 in turn
    (the flat class colours); returns ``root``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        data = class_images(labels, 32, rng).transpose(0, 3, 1, 2).reshape(n, 3072)
        entry = {"data": data, "fine_labels": labels.tolist(), "coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = {"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": ["x"]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return root


#: OpenOOD's folder of each OOD set (where pytorch-ood's downloader extracts it), and the
#: format the tiny copy stores it in: (folder, PIL mode, width, height, file suffix)
_OPENOOD_FORMATS: dict[str, tuple[str, str, int, int, str]] = {
    "CIFAR10": ("cifar10", "RGB", 32, 32, ".png"),
    "CIFAR100": ("cifar100", "RGB", 32, 32, ".png"),
    "TinyImageNet": ("tin", "RGB", 64, 64, ".JPEG"),
    "MNIST": ("mnist", "L", 28, 28, ".png"),
    "SVHN": ("svhn", "RGB", 32, 32, ".png"),
    "Textures": ("texture", "RGB", 48, 40, ".jpg"),
    "Places365": ("places365", "RGB", 40, 48, ".jpg"),
    "SSBHard": ("ssb_hard", "RGB", 48, 40, ".JPEG"),
    "NINCO": ("ninco", "RGB", 40, 48, ".jpg"),
    "iNaturalist": ("inaturalist", "RGB", 48, 48, ".jpg"),
    "OpenImagesO": ("openimage_o", "RGB", 40, 40, ".jpg"),
}


def _pattern_images(n: int, mode: str, w: int, h: int, k: int, rng: np.random.Generator):
    """``n`` PIL images of stripes (period and phase depend on the set ``k`` and the image)
    with noise: unlike the flat class colours of the ID images."""
    from PIL import Image

    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        period = 3 + (k + i) % 5
        wave = 127.5 + 120 * np.sin(2 * np.pi * (xx + (k + 1) * yy) / period + i)
        channels = 1 if mode == "L" else 3
        img = wave[..., None] + rng.integers(-25, 26, size=(h, w, channels))
        img = np.clip(img, 0, 255).astype(np.uint8)
        out.append(Image.fromarray(img[..., 0] if mode == "L" else img, mode))
    return out


def _write_list(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def write_openood_sets(
    root: Path,
    dataset: str,
    n_per_set: int = 12,
    lists_dir: Path | None = None,
    seed: int = 0,
    only: tuple[str, ...] | None = None,
) -> Path:
    """The OOD test sets of ``dataset``'s OpenOOD v1.5 benchmark (as pytorch-ood names them) in
    OpenOOD's format: images ``root/<folder>/test/<i><suffix>`` (grayscale PNGs for MNIST,
    JPEGs and PNGs of several sizes for the others) and, for each set, its image list
    ``<lists_dir>/<benchmark>/<list>`` with lines ``<folder>/test/<i><suffix> -1``; also the
    benchmark's ID and validation lists (a few ID images each), so that pytorch-ood's benchmark
    class itself can read the tree. ``lists_dir`` defaults to ``root/benchmark_imglist``;
    ``only``: write these sets only. Returns ``root``."""
    from pytorch_ood.benchmark import img

    from uniad_plugin.anomalies.openood import BENCHMARKS

    cls = getattr(img, BENCHMARKS[dataset])
    lists = (lists_dir or root / "benchmark_imglist") / cls._subdir
    rng = np.random.default_rng(seed)
    for k, (name, fname) in enumerate(cls._ood_imglists):
        if only is not None and name not in only:
            continue
        folder, mode, w, h, suffix = _OPENOOD_FORMATS[name]
        (root / folder / "test").mkdir(parents=True, exist_ok=True)
        rel = [f"{folder}/test/{i}{suffix}" for i in range(n_per_set)]
        for path, image in zip(rel, _pattern_images(n_per_set, mode, w, h, k, rng), strict=True):
            image.save(root / path)
        _write_list(lists / fname, [f"{p} -1" for p in rel])
    # the ID and validation lists pytorch-ood's benchmark class opens as well (two images each)
    (root / "id" / "test").mkdir(parents=True, exist_ok=True)
    id_rel = [f"id/test/{i}.png" for i in range(2)]
    for i, path in enumerate(id_rel):
        _pil(class_images(np.array([i]), 32, rng)[0]).save(root / path)
    for fname in (cls._train_imglist, cls._val_id_imglist, cls._test_id_imglist):
        if not (lists / fname).is_file():
            _write_list(lists / fname, [f"{p} {i}" for i, p in enumerate(id_rel)])
    if not (lists / cls._val_ood_imglist).is_file():
        _write_list(lists / cls._val_ood_imglist, [f"{p} -1" for p in id_rel])
    return root


def _pil(array: np.ndarray):
    """A PIL image of a uint8 array."""
    from PIL import Image

    return Image.fromarray(array)


def write_imagenet200(
    root: Path,
    n_train_per_class: int = 10,
    n_test: int = 180,
    n_val: int = 10,
    classes: int = 3,
    seed: int = 0,
) -> Path:
    """A tiny ImageNet-200 in OpenOOD's layout: training JPEGs
    ``root/imagenet_1k/train/<wnid>/<wnid>_<i>.JPEG``, flat validation JPEGs
    ``root/imagenet_1k/val/ILSVRC2012_val_<8 digits>.JPEG`` (40x48 pixels, the flat colour of
    their class plus noise), and the image lists ``root/benchmark_imglist/imagenet200/
    {train,val,test}_imagenet200.txt`` (``<path> <label>``, labels ``0..classes-1`` in turn).
    Returns ``root``."""
    rng = np.random.default_rng(seed)
    wnids = [f"n{1440764 + 10 * k:08d}" for k in range(classes)]
    lists = root / "benchmark_imglist" / "imagenet200"
    train = []
    for k, wnid in enumerate(wnids):
        (root / "imagenet_1k" / "train" / wnid).mkdir(parents=True, exist_ok=True)
        images = class_images(np.full(n_train_per_class, k), 48, rng)[:, :40]
        for i, image in enumerate(images):
            path = f"imagenet_1k/train/{wnid}/{wnid}_{i}.JPEG"
            _pil(image).save(root / path)
            train.append(f"{path} {k}")
    (root / "imagenet_1k" / "val").mkdir(parents=True, exist_ok=True)
    labels = np.arange(n_test + n_val) % classes
    val_lines = []
    for i, (image, k) in enumerate(zip(class_images(labels, 48, rng)[:, :40], labels, strict=True)):
        path = f"imagenet_1k/val/ILSVRC2012_val_{i + 1:08d}.JPEG"
        _pil(image).save(root / path)
        val_lines.append(f"{path} {k}")
    _write_list(lists / "train_imagenet200.txt", train)
    _write_list(lists / "test_imagenet200.txt", val_lines[:n_test])
    _write_list(lists / "val_imagenet200.txt", val_lines[n_test:])
    return root


def write_imagenet_folders(
    root: Path, n_train_per_class: int = 10, n_val_per_class: int = 60, classes: int = 3
) -> Path:
    """A tiny ImageNet-1K in torchvision's folder layout: ``root/imagenet/train/<wnid>/*.JPEG``
    and ``root/imagenet/val/<wnid>/*.JPEG`` (40x48 JPEGs of the flat class colours). Returns
    ``root``."""
    wnids = tuple(f"n{1440764 + 10 * k:08d}" for k in range(classes))
    base = root / "imagenet"
    write_image_folder(base / "train", wnids, n_per_class=n_train_per_class, suffix=".JPEG")
    write_image_folder(base / "val", wnids, n_per_class=n_val_per_class, seed=1, suffix=".JPEG")
    return root
