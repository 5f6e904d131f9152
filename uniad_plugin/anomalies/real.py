"""Real OOD sets (kind ``"OOD"``) through torchvision and pytorch-ood (:func:`load_ood`), and
any folder of the user's images (:func:`load_image_folder`).

The files hold 8-bit images; they are centre-cropped, resized and converted to the classifier's
input shape, then rounded back onto the value grid (``levels``, default 255).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from uniad_plugin._utils import seeded_generator
from uniad_plugin.anomalies.base import (
    DEFAULT_LEVELS,
    _check_levels,
    _check_n,
    _check_shape,
    _check_square_image_set,
)
from uniad_plugin.anomalies.ood import _CHUNK, OODSet, _finish, _to_channels

__all__ = ["OODSource", "OOD_DATASETS", "image_files", "load_image_folder", "load_ood"]

# ----------------------------------------------------------------------------- real datasets


@dataclass(frozen=True)
class OODSource:
    """A real OOD data set that :func:`load_ood` can load (its test split).

    :param description: what it is and where it comes from
    :param expected: ``(root, train) -> files`` the loader needs under ``root`` for the split
        (for the error message)
    :param load: ``(root, download, train) -> images`` as a uint8 tensor :math:`(N, C, h, w)`,
        or a dataset of PIL images for sets of differently sized images; ``train`` asks for the
        training split (the validation split's images), else the test split
    :param has_train: whether the set has a training split apart from its test split (a set
        without one gives no validation split)
    :param pad: images smaller than the target are centred on a black canvas instead of being
        resized (MNIST's 28x28 digits padded to 32x32, as CIFAR models are usually shown them)
    """

    description: str
    expected: Callable[[Path, bool], list[Path]]
    load: Callable[[Path, bool, bool], Any]
    has_train: bool = True
    pad: bool = False


_IDX = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def _mnist_like(cls_name: str, *, pad: bool = False) -> OODSource:
    def expected(root: Path, train: bool) -> list[Path]:
        return [root / cls_name / "raw" / f for f in _IDX]

    def load(root: Path, download: bool, train: bool) -> Tensor:
        import torchvision.datasets as tvd

        ds = getattr(tvd, cls_name)(root=str(root), train=train, download=download)
        return ds.data.unsqueeze(1)

    where = "padded to the target size when smaller" if pad else "resized"
    return OODSource(f"torchvision.datasets.{cls_name}, {where}", expected, load, pad=pad)


def _emnist_expected(root: Path, train: bool) -> list[Path]:
    raw, split = root / "EMNIST" / "raw", "train" if train else "test"
    return [raw / f"emnist-letters-{split}-{k}-ubyte" for k in ("images-idx3", "labels-idx1")]


def _emnist_load(root: Path, download: bool, train: bool) -> Tensor:
    from torchvision.datasets import EMNIST

    ds = EMNIST(root=str(root), split="letters", train=train, download=download)
    # EMNIST's IDX files store images transposed; torchvision does not undo it
    return ds.data.transpose(1, 2).unsqueeze(1)


def _cifar10_expected(root: Path, train: bool) -> list[Path]:
    from torchvision.datasets import CIFAR10

    files = [f for f, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    return [root / CIFAR10.base_folder / f for f in files]


def _cifar10_load(root: Path, download: bool, train: bool) -> Tensor:
    from torchvision.datasets import CIFAR10

    ds = CIFAR10(root=str(root), train=train, download=download)
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2)


def _svhn_expected(root: Path, train: bool) -> list[Path]:
    return [root / ("train_32x32.mat" if train else "test_32x32.mat")]


def _svhn_load(root: Path, download: bool, train: bool) -> Tensor:
    from torchvision.datasets import SVHN

    ds = SVHN(root=str(root), split="train" if train else "test", download=download)
    return torch.from_numpy(ds.data)


def _textures_expected(root: Path, train: bool) -> list[Path]:
    from pytorch_ood.dataset.img import Textures

    return [root / Textures.filename, root / Textures.base_folder]


def _textures_load(root: Path, download: bool, train: bool) -> Any:
    from pytorch_ood.dataset.img import Textures

    return Textures(root=str(root), download=download)


#: the real OOD sets of :func:`load_ood`, by name
OOD_DATASETS: dict[str, OODSource] = {
    "mnist": _mnist_like("MNIST", pad=True),
    "fashion_mnist": _mnist_like("FashionMNIST"),
    "kmnist": _mnist_like("KMNIST"),
    "emnist_letters": OODSource(
        "torchvision.datasets.EMNIST(split='letters'), transposed upright",
        _emnist_expected,
        _emnist_load,
    ),
    "cifar10": OODSource("torchvision.datasets.CIFAR10", _cifar10_expected, _cifar10_load),
    "svhn": OODSource("torchvision.datasets.SVHN", _svhn_expected, _svhn_load),
    "textures": OODSource(
        "pytorch_ood.dataset.img.Textures (DTD), all images",
        _textures_expected,
        _textures_load,
        has_train=False,
    ),
}


def _crop_box(h_in: int, w_in: int, h: int, w: int) -> tuple[int, int, int, int]:
    """Largest centred box (top, left, height, width) of aspect ``w / h`` inside the input."""
    if w_in * h > h_in * w:  # input wider than target
        cw, ch = max(1, round(h_in * w / h)), h_in
    else:
        cw, ch = w_in, max(1, round(w_in * h / w))
    return (h_in - ch) // 2, (w_in - cw) // 2, ch, cw


def _pad_uint8(data: Tensor, h: int, w: int) -> Tensor:
    """Centre images no larger than (h, w) on a black canvas of that size, in [0, 1]."""
    top, left = (h - data.shape[2]) // 2, (w - data.shape[3]) // 2
    out = torch.zeros(len(data), data.shape[1], h, w)
    out[:, :, top : top + data.shape[2], left : left + data.shape[3]] = data.float() / 255.0
    return out


def _resize_uint8(data: Tensor, h: int, w: int) -> Tensor:
    """Batched: centre-crop to the target aspect, resize (bilinear, anti-aliased) to [0, 1]."""
    top, left, ch, cw = _crop_box(data.shape[2], data.shape[3], h, w)
    out = torch.empty(len(data), data.shape[1], h, w)
    for i in range(0, len(data), _CHUNK):
        x = data[i : i + _CHUNK, :, top : top + ch, left : left + cw].float() / 255.0
        if (ch, cw) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + _CHUNK] = x
    return out.clamp_(0.0, 1.0)


def _resize_pil(dataset: Any, idx: Tensor, h: int, w: int) -> Tensor:
    """Decode the images ``idx`` of a dataset of PIL images, centre-crop, resize to [0, 1]."""
    import numpy as np
    from PIL import Image

    out = torch.empty(len(idx), 3, h, w)
    for j, i in enumerate(idx.tolist()):  # decoding files is inherently per image
        img = dataset[i][0].convert("RGB")
        top, left, ch, cw = _crop_box(img.height, img.width, h, w)
        img = img.resize((w, h), Image.BILINEAR, box=(left, top, left + cw, top + ch))
        out[j] = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return out


def load_ood(
    name: str,
    root: str | os.PathLike[str],
    shape: tuple[int, int, int],
    *,
    download: bool = False,
    n: int | None = None,
    seed: int = 0,
    levels: int | None = DEFAULT_LEVELS,
    split: str = "report",
) -> OODSet:
    """A real OOD data set through torchvision or pytorch-ood, as an :class:`OODSet` of images
    of ``shape`` in [0, 1]: its test split for the report, its training split for validation.

    Images are centre-cropped to the aspect ratio of ``shape``, resized (bilinear,
    anti-aliased), and converted between grayscale and RGB as ``shape`` asks (luminance
    weights for RGB -> gray, replication for gray -> RGB), then rounded onto the grid: the
    files are 8-bit, but resizing and the luminance conversion leave the 1/255 grid. MNIST
    digits smaller than ``shape`` are padded with black instead (28x28 -> 32x32: 2 pixels on
    each side), the way CIFAR benchmarks show them. EMNIST letters are transposed upright (its
    files store them transposed).

    :param name: one of :data:`OOD_DATASETS`: ``"mnist"``, ``"fashion_mnist"``, ``"kmnist"``,
        ``"emnist_letters"``, ``"cifar10"``, ``"svhn"``, ``"textures"``
    :param root: directory of the data, in torchvision's layout (e.g.
        ``root/FashionMNIST/raw/t10k-images-idx3-ubyte``)
    :param shape: image shape :math:`(C, H, W)`, ``C`` in {1, 3}
    :param download: download missing files to ``root`` (needs internet)
    :param n: keep a random subset of this many images (chosen with ``seed``, kept in file
        order); ``None`` keeps all
    :param seed: seed of the subset choice
    :param levels: value grid: values ``k / levels`` (default 255, 8-bit), ``None`` for
        continuous values (the name gets ``" (continuous)"``)
    :param split: ``"report"`` (the test split) or ``"validation"`` (the training split, so
        that defaults chosen on it never see the reported images)
    :return: the set, named ``name``
    :raises ValueError: on an unknown ``name`` (the message lists :data:`OOD_DATASETS`), a bad
        ``shape`` or ``split``, ``split="validation"`` for a set without a training split
        (``"textures"``), ``n`` larger than the data set, or files that cannot be loaded
        (corrupted, or a failed download; the original error is chained)
    :raises FileNotFoundError: with ``download=False``, if files are missing under ``root``
        (the message lists them and says to pass ``download=True``)
    """
    if name not in OOD_DATASETS:
        raise ValueError(f"unknown OOD data set {name!r}; expected one of {sorted(OOD_DATASETS)}")
    c, h, w = _check_shape(shape)
    if c not in (1, 3):
        raise ValueError(f"expected shape with 1 (grayscale) or 3 (RGB) channels, got {shape}")
    if n is not None:
        _check_n(n)
    levels = _check_levels(levels)
    if split not in ("report", "validation"):
        raise ValueError(f"expected split 'report' or 'validation', got {split!r}")
    gen = seeded_generator(seed)
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"expected root to be a path, got {type(root).__name__}")
    root = Path(root).expanduser()
    source = OOD_DATASETS[name]
    train = split == "validation"
    if train and not source.has_train:
        raise ValueError(
            f"{name} has no training split, so no validation images apart from the reported "
            "ones; use split='report' or leave it out of the validation run"
        )
    if not download:
        missing = [str(p) for p in source.expected(root, train) if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"{name}: files not found under root {str(root)!r}; missing: {missing}. "
                f"Pass download=True to download them there, or point root at the directory "
                f"that holds them ({source.description})."
            )
    try:
        data = source.load(root, download, train)
    except Exception as e:  # torchvision raises RuntimeError, AssertionError, ... on bad files
        raise ValueError(
            f"{name}: could not load the files under root {str(root)!r}: {type(e).__name__}: {e}"
        ) from e

    total = len(data)
    if n is not None and n > total:
        raise ValueError(f"expected n <= {total} (the size of {name}), got {n}")
    if n is None:
        idx = torch.arange(total)
    else:
        idx = torch.randperm(total, generator=gen)[:n].sort().values
    if isinstance(data, Tensor) and source.pad and data.shape[2] <= h and data.shape[3] <= w:
        x = _pad_uint8(data[idx], h, w)
    elif isinstance(data, Tensor):
        x = _resize_uint8(data[idx], h, w)
    else:
        x = _resize_pil(data, idx, h, w)
    x = _to_channels(x, c)
    info = {"dataset": name, "root": str(root), "split": "train" if train else "test"}
    info |= {"n": len(idx), "seed": seed}
    info |= {"n_total": total, "shape": [c, h, w], "source": source.description}
    return _finish(x, name, info, levels)


# ----------------------------------------------------------------------------- image folders


class _ImageFiles(torch.utils.data.Dataset):
    """Image files through a transform, each labelled ``-1``."""

    def __init__(self, files: list[Path], transform: Callable[[Any], Tensor]) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        with Image.open(self.files[i]) as img:
            return self.transform(img), -1


def image_files(root: str | os.PathLike[str]) -> list[Path]:
    """The image files under ``root`` (its own and those of its subfolders, at any depth, so
    a flat folder and an ``ImageFolder`` tree alike), by torchvision's image extensions, in
    sorted order; hidden files and folders are passed over."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(root)
    out = []
    for path in sorted(root.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
        if not hidden and path.suffix.lower() in IMG_EXTENSIONS and path.is_file():
            out.append(path)
    return out


def load_image_folder(
    root: str | os.PathLike[str],
    shape: tuple[int, int, int],
    *,
    n: int | None = None,
    seed: int = 0,
    levels: int | None = DEFAULT_LEVELS,
    crop: float = 1.0,
    name: str | None = None,
) -> OODSet:
    """A folder of image files as an :class:`OODSet` of images of ``shape`` in [0, 1]: a flat
    folder of images or an ``ImageFolder`` tree (``root/<class>/<image>``; the class folders
    are ignored, every image is an anomaly), see :func:`image_files`.

    The images go through the evaluation transform of the ID data (RGB, resize of the shorter
    side to ``side / crop``, centre crop to the side, 8-bit; see
    :func:`~uniad_plugin._images.eval_transform`), are converted to ``shape``'s channels
    (luminance for one channel) and put on the grid ``levels``, as the other OOD sets are.

    :param root: the folder
    :param shape: image shape :math:`(C, H, W)` with ``H == W``, ``C`` in {1, 3}
    :param n: at most this many images, a random subset chosen with ``seed`` (kept in file
        order); ``None``, or more than the folder holds: all
    :param levels: value grid: values ``k / levels`` (default 255, 8-bit), ``None`` for
        continuous values (the name gets ``" (continuous)"``)
    :param crop: crop ratio of the ID data's evaluation transform (1 for the 32x32 data sets,
        0.875 for ImageNet's resize to 256 and crop to 224)
    :param name: the set's name (default: the folder's name)
    :raises FileNotFoundError: if ``root`` is not a folder
    :raises ValueError: if it holds no image file, an image cannot be read, or on a bad
        ``shape``, ``n`` or ``levels``
    """
    from uniad_plugin._images import eval_transform, load_images

    c, h, levels = _check_square_image_set(shape, n, levels)
    w = h
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"OOD image folder {str(root)!r} does not exist")
    files = image_files(path)
    if not files:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        raise ValueError(
            f"no image files in the OOD folder {str(root)!r} (nor in its subfolders); expected "
            f"files ending in {', '.join(IMG_EXTENSIONS[:4])}, ..."
        )
    name = name or path.resolve().name
    gen = seeded_generator(seed)
    total = len(files)
    if n is None or n >= total:
        idx = torch.arange(total)
    else:
        idx = torch.randperm(total, generator=gen)[:n].sort().values
    data = _ImageFiles(files, eval_transform(h, crop))
    try:
        x, _ = load_images(data, idx)
    except Exception as e:  # noqa: BLE001 - PIL's errors on broken files
        raise ValueError(f"cannot read the images of the OOD folder {str(root)!r}: {e}") from e
    x = _to_channels(x, c)
    info = {"dataset": name, "root": str(path), "n": len(idx), "n_total": total, "seed": seed}
    info |= {"shape": [c, h, w], "source": "image folder", "crop": crop}
    return _finish(x, name, info, levels)
