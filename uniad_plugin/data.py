"""In-distribution data that works offline.

:func:`digits_splits` turns scikit-learn's bundled 8x8 digits into four disjoint tensor
datasets: ``train`` (fit the classifier and the detectors), ``test`` (ID inputs that are
scored), ``attack`` (ID inputs that adversarial examples are crafted from, so that no
scored ID input is also the source of an adversarial one) and ``val`` (held-out ID inputs on
which thresholds are chosen, never fitted on and never reported). :func:`mnist_splits` does the
same for MNIST, read through torchvision from a data root; :func:`cifar10_splits` and
:func:`cifar100_splits` for CIFAR-10 and CIFAR-100 (3x32x32), :func:`imagenet200_splits` for
OpenOOD's ImageNet-200 (its image lists, through pytorch-ood), :func:`imagenet_splits` for
ImageNet-1K in torchvision's folder layout (both 3x224x224) and :func:`folder_splits` for the
user's own ``ImageFolder`` trees.

The ImageNet-scale training sets stay on disk (a dataset that decodes each image when it is
read); every other split is held in memory as a tensor dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from uniad_plugin.errors import ConfigError, one_line

#: parts of MNIST's test set that :func:`mnist_splits` draws from: ``"report"`` for the
#: reported evaluation, ``"validation"`` (disjoint from it) for tuning and ablations
PARTS: tuple[str, ...] = ("report", "validation")


@dataclass
class Splits:
    """Disjoint ID splits with images in [0, 1] of shape ``(N, C, H, W)``.

    :param train: fits the classifier and the detectors: a tensor dataset, or for the
        ImageNet-scale data sets a dataset that reads its images from disk
    :param test: the ID inputs that are scored and reported
    :param attack: the ID inputs adversarials and ``noisy_id`` are made from
    :param num_classes: number of classes
    :param val: held-out ID inputs for thresholds (e.g. the detection rate at 5% FPR);
        ``None`` if there are none
    """

    train: Dataset
    test: TensorDataset
    attack: TensorDataset
    num_classes: int
    val: TensorDataset | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.test.tensors[0].shape[1:])


def digits_splits(
    seed: int = 0,
    test_fraction: float = 0.15,
    attack_fraction: float = 0.15,
    val_fraction: float = 0.1,
) -> Splits:
    """scikit-learn's digits (1,797 images, 1x8x8, values k/16 scaled to [0, 1]) in four
    splits: ``val`` (held-out ID for thresholds), ``test``, ``attack`` and ``train`` (the rest),
    in this order along a seeded permutation.

    The boundaries are cumulative (``round((val + test) * N)``, ...), so with the defaults the
    ``train`` and ``attack`` splits are those of earlier versions (whose ``test`` split was the
    first 25%); ``val`` and ``test`` divide that 25%.

    :param seed: seed of the random permutation that assigns samples to splits
    :raises ValueError: if the fractions leave no training data
    """
    fractions = (val_fraction, test_fraction, attack_fraction)
    if not (min(fractions) > 0 and sum(fractions) < 1):
        raise ValueError(
            "expected positive test_fraction, attack_fraction and val_fraction with a sum < 1, "
            f"got {test_fraction}, {attack_fraction} and {val_fraction}"
        )
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    b1 = int(round(val_fraction * len(x)))
    b2 = int(round((val_fraction + test_fraction) * len(x)))
    b3 = int(round(sum(fractions) * len(x)))
    val_idx, test_idx, attack_idx, train_idx = perm[:b1], perm[b1:b2], perm[b2:b3], perm[b3:]
    return Splits(
        train=TensorDataset(x[train_idx], y[train_idx]),
        test=TensorDataset(x[test_idx], y[test_idx]),
        attack=TensorDataset(x[attack_idx], y[attack_idx]),
        num_classes=10,
        val=TensorDataset(x[val_idx], y[val_idx]),
    )


def mnist_dataset(
    root: str | os.PathLike, *, train: bool = True, download: bool = False
) -> TensorDataset:
    """MNIST's training (60,000) or test (10,000) images through torchvision, in their order,
    as a tensor dataset of images 1x28x28 in [0, 1] and labels.

    :param root: folder with ``MNIST/raw`` (torchvision's layout)
    :raises RuntimeError: (torchvision's) if the files are missing and ``download`` is off
    """
    from torchvision.datasets import MNIST

    ds = MNIST(str(root), train=train, download=download)
    return TensorDataset(ds.data.unsqueeze(1).float().div_(255.0), ds.targets.long())


def mnist_splits(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    n_test: int = 2000,
    n_attack: int = 1000,
    n_val: int = 1000,
    download: bool = False,
    part: str = "report",
) -> Splits:
    """MNIST through torchvision as :class:`~uniad_plugin.data.Splits` (images 1x28x28 in [0, 1]).

    ``train`` is the 60,000 training images; ``test``, ``attack`` and ``val`` are disjoint
    random subsets (``n_test``, ``n_attack`` and ``n_val`` images) of the 10,000 test images,
    taken from the front of a permutation drawn with ``seed`` (``part="report"``) or from its
    back (``part="validation"``, at most 5,000 images): with the same seed, the two parts
    share no image as long as the report part uses at most 5,000 images too (the defaults use
    4,000 each).

    :raises ConfigError: if ``root`` does not exist or holds no MNIST (and ``download`` is off),
        or the sizes do not fit in the test set
    """

    root = Path(root)
    if not root.is_dir() and not download:
        raise ConfigError(
            f"data root {str(root)!r} does not exist; pass root=DIR with MNIST/raw inside, "
            "or download=True"
        )
    if part not in PARTS:
        raise ConfigError(f"expected part in {PARTS}, got {part!r}")
    total = n_test + n_attack + n_val
    room = 10000 if part == "report" else 5000
    if min(n_test, n_attack, n_val) < 1 or total > room:
        raise ConfigError(
            f"expected n_test, n_attack, n_val >= 1 with a sum <= {room} (MNIST's test set"
            + (", half of it for each part" if part != "report" else "")
            + f"), got {n_test}, {n_attack} and {n_val}"
        )
    try:
        x_tr, y_tr = mnist_dataset(root, train=True, download=download).tensors
        x_te, y_te = mnist_dataset(root, train=False, download=download).tensors
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"MNIST not found under {str(root)!r} ({one_line(e)}); expected "
            f"{root / 'MNIST' / 'raw'} with the IDX files, or pass download=True"
        ) from e
    return split_test_set(
        TensorDataset(x_tr, y_tr), TensorDataset(x_te, y_te), (n_test, n_attack, n_val), seed, part
    )


def split_test_set(
    train: TensorDataset,
    test: TensorDataset,
    sizes: tuple[int, int, int],
    seed: int = 0,
    part: str = "report",
    num_classes: int = 10,
) -> Splits:
    """:class:`Splits` of a data set with a training and a test set: ``train`` as it is,
    ``test``, ``attack`` and ``val`` (``sizes``, in this order) disjoint subsets of the test
    set, from the front of a permutation drawn with ``seed`` (``part="report"``) or from its
    back (``part="validation"``).

    :raises ConfigError: if the sizes do not fit in the test set (half of it for a part)
    """
    x_te, y_te = test.tensors
    t_idx, a_idx, v_idx = split_indices(len(x_te), sizes, seed, part)
    return Splits(
        train=train,
        test=TensorDataset(x_te[t_idx], y_te[t_idx]),
        attack=TensorDataset(x_te[a_idx], y_te[a_idx]),
        num_classes=num_classes,
        val=TensorDataset(x_te[v_idx], y_te[v_idx]),
    )


def split_indices(
    total: int, sizes: tuple[int, int, int], seed: int = 0, part: str = "report"
) -> tuple[Tensor, Tensor, Tensor]:
    """Three disjoint index sets of ``sizes`` (test, attack, held-out) of a test set of
    ``total`` images: the front of a permutation drawn with ``seed`` (``part="report"``) or its
    back (``part="validation"``).

    :raises ConfigError: if the sizes do not fit in the test set (half of it for a part)
    """

    room = total if part == "report" else total // 2
    if sum(sizes) > room:
        raise ConfigError(
            f"expected n_test + attack split + held-out images <= {room} (the {part} part of a "
            f"test set of {total} images), got {' + '.join(map(str, sizes))}"
        )
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    if part == "validation":
        perm = perm.flip(0)
    t_idx, a_idx, v_idx = perm[: sum(sizes)].split(list(sizes))
    return t_idx, a_idx, v_idx


def _unchecked_cifar(name: str = "CIFAR10") -> type:
    """torchvision's ``CIFAR10`` or ``CIFAR100`` with the md5 sums of the extracted files not
    checked.

    torchvision refuses files whose md5 sum differs from the official ones, so it cannot read a
    subsample or a re-encoded copy in its own format (the tests write a tiny one). This
    subclass sets those sums to ``None`` (torchvision's ``check_integrity`` then only checks
    that each file exists); the parsing is torchvision's, and ``download=True`` still checks
    the downloaded archive against its md5 sum.
    """
    import torchvision.datasets as tvd

    base = getattr(tvd, name)
    return type(
        f"_{name}",
        (base,),
        {
            "train_list": [[f, None] for f, _ in base.train_list],
            "test_list": [[f, None] for f, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
        },
    )


def _cifar_dataset(
    name: str, root: str | os.PathLike, train: bool, download: bool
) -> TensorDataset:
    ds = _unchecked_cifar(name)(str(root), train=train, download=download)
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    return TensorDataset(x, torch.tensor(ds.targets, dtype=torch.long))


def cifar10_dataset(
    root: str | os.PathLike, *, train: bool = True, download: bool = False
) -> TensorDataset:
    """CIFAR-10's training (50,000) or test (10,000) images through torchvision, in their
    order, as a tensor dataset of images 3x32x32 in [0, 1] (8-bit: values ``k / 255``) and
    labels. The md5 sums of the extracted files are not checked (see the note in the source).

    :param root: folder with ``cifar-10-batches-py`` (torchvision's layout)
    :raises RuntimeError: (torchvision's) if the files are missing and ``download`` is off
    """
    return _cifar_dataset("CIFAR10", root, train, download)


def cifar100_dataset(
    root: str | os.PathLike, *, train: bool = True, download: bool = False
) -> TensorDataset:
    """CIFAR-100's training (50,000) or test (10,000) images through torchvision, in their
    order, as a tensor dataset of images 3x32x32 in [0, 1] (values ``k / 255``) and the 100
    fine labels; md5 sums of the extracted files not checked, as for :func:`cifar10_dataset`.

    :param root: folder with ``cifar-100-python`` (torchvision's layout)
    :raises RuntimeError: (torchvision's) if the files are missing and ``download`` is off
    """
    return _cifar_dataset("CIFAR100", root, train, download)


def _check_split_args(part: str, sizes: tuple[int, int, int]) -> None:

    if part not in PARTS:
        raise ConfigError(f"expected part in {PARTS}, got {part!r}")
    if min(sizes) < 1:
        raise ConfigError(
            f"expected n_test, n_attack, n_val >= 1, got {', '.join(map(str, sizes))}"
        )


def _cifar_splits(
    name: str,
    root: str | os.PathLike,
    sizes: tuple[int, int, int],
    seed: int,
    download: bool,
    part: str,
) -> Splits:

    _check_split_args(part, sizes)
    title, folder_name, files, num_classes = _CIFAR[name]
    folder = Path(root) / folder_name
    missing = [n for n in files if not (folder / n).is_file()]
    if missing and not download:
        raise ConfigError(
            f"{title} not found: {', '.join(missing)} missing in {folder}; pass root=DIR "
            f"with {folder_name} inside (torchvision's layout), or download=True"
        )
    train = _cifar_dataset(name, root, True, download)
    test = _cifar_dataset(name, root, False, False)
    return split_test_set(train, test, sizes, seed, part, num_classes=num_classes)


def cifar10_splits(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    n_test: int = 2000,
    n_attack: int = 1000,
    n_val: int = 1000,
    download: bool = False,
    part: str = "report",
) -> Splits:
    """CIFAR-10 through torchvision as :class:`Splits` (images 3x32x32 in [0, 1]), split as
    :func:`mnist_splits` splits MNIST: ``train`` is the training set; ``test``, ``attack`` and
    ``val`` are disjoint random subsets of the test set (see :func:`split_test_set`).

    :raises ConfigError: if the data are missing (one line: what, where, and ``download=True``),
        ``part`` is unknown or the sizes do not fit in the test set
    """
    return _cifar_splits("CIFAR10", root, (n_test, n_attack, n_val), seed, download, part)


def cifar100_splits(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    n_test: int = 2000,
    n_attack: int = 1000,
    n_val: int = 1000,
    download: bool = False,
    part: str = "report",
) -> Splits:
    """CIFAR-100 through torchvision as :class:`Splits` (images 3x32x32 in [0, 1], 100
    classes), split as :func:`cifar10_splits` splits CIFAR-10.

    :raises ConfigError: if the data are missing (one line: what, where, and ``download=True``),
        ``part`` is unknown or the sizes do not fit in the test set
    """
    return _cifar_splits("CIFAR100", root, (n_test, n_attack, n_val), seed, download, part)


#: the data files of torchvision's CIFAR-10 folder ``cifar-10-batches-py``
CIFAR10_FILES: tuple[str, ...] = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
#: the data files of torchvision's CIFAR-100 folder ``cifar-100-python``
CIFAR100_FILES: tuple[str, ...] = ("train", "test")
#: torchvision class -> (name in messages, folder, files, classes)
_CIFAR: dict[str, tuple[str, str, tuple[str, ...], int]] = {
    "CIFAR10": ("CIFAR-10", "cifar-10-batches-py", (*CIFAR10_FILES, "batches.meta"), 10),
    "CIFAR100": ("CIFAR-100", "cifar-100-python", (*CIFAR100_FILES, "meta"), 100),
}

#: side of the ImageNet-scale inputs, and the crop ratio of their evaluation transform (resize
#: the shorter side to 256, center crop 224)
IMAGENET_SIZE: int = 224
IMAGENET_CROP: float = 0.875
#: ImageNet-200's image lists in OpenOOD's ``benchmark_imglist/imagenet200``
IMAGENET200_LISTS: dict[str, str] = {
    "train": "train_imagenet200.txt",
    "val": "val_imagenet200.txt",
    "test": "test_imagenet200.txt",
}
#: files of a training set checked to exist before a run (a seeded sample)
_N_CHECKED = 256


def _load_test_part(
    data: Dataset,
    files: list[str],
    sizes: tuple[int, int, int],
    seed: int,
    part: str,
    missing_hint: str,
) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """The test, attack and held-out parts of an on-disk test set, loaded into memory.

    :raises ConfigError: if the sizes do not fit, or chosen files are missing (one line)
    """
    from uniad_plugin._images import load_images, missing_files

    parts = split_indices(len(data), sizes, seed, part)
    chosen = torch.cat(parts)
    missing = missing_files([files[i] for i in chosen.tolist()])
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(chosen)} chosen test images missing; {missing_hint} (first "
            f"missing: {missing[0]})"
        )
    x, y = load_images(data, chosen)
    x_t, x_a, x_v = x.split(list(sizes))
    y_t, y_a, y_v = y.split(list(sizes))
    return TensorDataset(x_t, y_t), TensorDataset(x_a, y_a), TensorDataset(x_v, y_v)


def _check_train_files(files: list[str], seed: int, what: str, hint: str) -> None:
    """Check a seeded sample of the training files (all of them would take long at scale)."""
    from uniad_plugin._images import missing_files

    if not files:
        raise ConfigError(f"{what}: the training set lists no image; {hint}")
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randperm(len(files), generator=gen)[:_N_CHECKED].tolist()
    missing = missing_files([files[i] for i in sample])
    if missing:
        raise ConfigError(
            f"{what}: {len(missing)} of {len(sample)} sampled training images missing; {hint} "
            f"(first missing: {missing[0]})"
        )


def imagenet200_splits(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    n_test: int = 1000,
    n_attack: int = 500,
    n_val: int = 500,
    download: bool = False,
    part: str = "report",
    image_size: int = IMAGENET_SIZE,
) -> Splits:
    """OpenOOD's ImageNet-200 (200 ImageNet-1K classes, labels 0-199) as :class:`Splits`,
    read from OpenOOD's image lists with pytorch-ood's
    :class:`~pytorch_ood.dataset.img.ImageListDataset`, as
    :class:`pytorch_ood.benchmark.img.ImageNet200_OpenOOD` reads it.

    ``train`` is the training list (about 259,000 images), read from disk when used; ``test``,
    ``attack`` and ``val`` are disjoint random subsets of the test list (9,000 images of
    ImageNet-1K's validation set), loaded into memory (see :func:`split_indices`). Images go
    through ImageNet's evaluation transform: RGB, shorter side resized to
    ``image_size / 0.875`` (256), center crop to ``image_size`` (224), 8-bit values ``k / 255``.

    :param root: folder the lists' paths are relative to: ``root/imagenet_1k/train/<wnid>/...``
        and ``root/imagenet_1k/val/ILSVRC2012_val_*.JPEG`` (OpenOOD's layout)
    :param download: let pytorch-ood fetch OpenOOD's image lists (ImageNet itself cannot be
        downloaded)
    :raises ConfigError: if the lists or images are missing (one line: what, where and what to
        do), ``part`` is unknown or the sizes do not fit in the test list
    """
    from pytorch_ood.dataset.img import ImageListDataset

    from uniad_plugin._images import eval_transform
    from uniad_plugin.imglists import find_imglist

    sizes = (n_test, n_attack, n_val)
    _check_split_args(part, sizes)
    root = Path(root)
    try:
        lists = {
            k: find_imglist("imagenet200", f, root, download) for k, f in IMAGENET200_LISTS.items()
        }
    except FileNotFoundError as e:
        raise ConfigError(f"ImageNet-200 not found: {' '.join(str(e).split())}") from None
    if not root.is_dir():
        raise ConfigError(f"ImageNet-200 not found: data root {str(root)!r} does not exist")
    hint = (
        f"expected ImageNet-1K under {root / 'imagenet_1k'} as OpenOOD's image lists give it "
        "(train/<wnid>/*.JPEG, val/ILSVRC2012_val_*.JPEG); ImageNet cannot be downloaded"
    )
    to_unit = eval_transform(image_size, IMAGENET_CROP, unit=True)
    train = ImageListDataset(str(root), str(lists["train"]), transform=to_unit)
    _check_train_files(train.files, seed, "ImageNet-200", hint)
    test = ImageListDataset(
        str(root), str(lists["test"]), transform=eval_transform(image_size, IMAGENET_CROP)
    )
    t, a, v = _load_test_part(test, test.files, sizes, seed, part, hint)
    return Splits(train=train, test=t, attack=a, num_classes=200, val=v)


def imagenet_splits(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    n_test: int = 1000,
    n_attack: int = 500,
    n_val: int = 500,
    part: str = "report",
    image_size: int = IMAGENET_SIZE,
) -> Splits:
    """ImageNet-1K in torchvision's folder layout as :class:`Splits`, read with torchvision's
    :class:`~torchvision.datasets.ImageFolder`: ``root/imagenet/train/<wnid>/*`` and
    ``root/imagenet/val/<wnid>/*`` (the layout of :class:`torchvision.datasets.ImageNet`;
    labels are the sorted class folders, 0-999 for the full data set).

    ``train`` is the training tree, read from disk when used; ``test``, ``attack`` and ``val``
    are disjoint random subsets of the validation tree (50,000 images), loaded into memory.
    Images go through ImageNet's evaluation transform (see :func:`imagenet200_splits`).

    :raises ConfigError: if a tree is missing or empty, the two trees have different classes,
        ``part`` is unknown or the sizes do not fit in the validation tree
    """
    from torchvision.datasets import ImageFolder

    from uniad_plugin._images import eval_transform

    sizes = (n_test, n_attack, n_val)
    _check_split_args(part, sizes)
    base = Path(root) / "imagenet"
    hint = (
        f"expected {base / 'train'} and {base / 'val'} with one folder of images per class "
        "(torchvision's ImageNet layout); ImageNet cannot be downloaded"
    )
    trees = {}
    for split in ("train", "val"):
        if not (base / split).is_dir():
            raise ConfigError(f"ImageNet not found: no folder {base / split}; {hint}")
        unit = split == "train"
        try:
            trees[split] = ImageFolder(
                str(base / split), transform=eval_transform(image_size, IMAGENET_CROP, unit=unit)
            )
        except Exception as e:  # noqa: BLE001 - torchvision's FileNotFoundError on empty trees
            raise ConfigError(f"ImageNet not found: {one_line(e)}; {hint}") from e
    train, val = trees["train"], trees["val"]
    if train.classes != val.classes:
        raise ConfigError(
            f"the class folders of {base / 'train'} ({len(train.classes)}) and {base / 'val'} "
            f"({len(val.classes)}) differ"
        )
    t, a, v = _load_test_part(val, [p for p, _ in val.samples], sizes, seed, part, hint)
    return Splits(train=train, test=t, attack=a, num_classes=len(train.classes), val=v)


def image_folder(path: str | os.PathLike, image_size: int = 32) -> tuple[TensorDataset, list]:
    """An ``ImageFolder`` tree (``path/<class>/<image>``, read by torchvision) as a tensor
    dataset of RGB images resized (shorter side) and center-cropped to ``image_size``, in
    [0, 1] on the 8-bit grid (``k / 255``), and its class names. Everything is held in memory.

    :raises ConfigError: if ``path`` is not a folder or holds no class folder with images
    """
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    if not Path(path).is_dir():
        raise ConfigError(f"image folder {str(path)!r} does not exist")
    size = transforms.Compose(
        [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.PILToTensor()]
    )
    try:
        ds = ImageFolder(str(path), transform=size)
    except Exception as e:  # noqa: BLE001 - torchvision's FileNotFoundError on empty trees
        raise ConfigError(
            f"no images in {str(path)!r}: expected one folder of images per class "
            f"(path/<class>/<image>.png): {one_line(e)}"
        ) from e
    x = torch.stack([img for img, _ in ds]).float().div_(255.0)
    return TensorDataset(x, torch.tensor(ds.targets, dtype=torch.long)), list(ds.classes)


def folder_splits(
    train_dir: str | os.PathLike,
    test_dir: str | os.PathLike,
    *,
    image_size: int = 32,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.5, 0.25, 0.25),
) -> Splits:
    """The user's ``ImageFolder`` trees (see :func:`image_folder`) as :class:`Splits`:
    ``train`` is ``train_dir``; ``test``, ``attack`` and ``val`` divide ``test_dir`` (by
    ``fractions``, along a permutation drawn with ``seed``; each gets at least one image).
    The number of classes is the number of class folders.

    :raises ConfigError: on a missing or empty folder, different classes in the two trees, or
        a test folder of fewer than 3 images
    """

    train, classes = image_folder(train_dir, image_size)
    test, test_classes = image_folder(test_dir, image_size)
    if classes != test_classes:
        raise ConfigError(
            f"the class folders of {str(train_dir)!r} ({', '.join(classes)}) and "
            f"{str(test_dir)!r} ({', '.join(test_classes)}) differ"
        )
    n = len(test)
    if n < 3:
        raise ConfigError(f"expected at least 3 images in {str(test_dir)!r}, got {n}")
    n_attack = max(1, int(round(fractions[1] * n)))
    n_val = max(1, int(round(fractions[2] * n)))
    n_test = max(1, min(n - n_attack - n_val, int(round(fractions[0] * n))))
    return split_test_set(train, test, (n_test, n_attack, n_val), seed, num_classes=len(classes))
