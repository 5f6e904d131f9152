"""OpenOOD v1.5's near- and far-OOD test sets (kind ``"OOD"``), read with pytorch-ood's loaders.

pytorch-ood's OpenOOD benchmarks (:class:`pytorch_ood.benchmark.img.CIFAR10_OpenOOD`,
``CIFAR100_OpenOOD``, ``ImageNet200_OpenOOD``, ``ImageNet_OpenOOD``) name the OOD test sets of
each in-distribution data set, split them into near-OOD and far-OOD, and read each one from
an OpenOOD image list (``<relative path> <label>`` per line) with
:class:`pytorch_ood.dataset.img.ImageListDataset`. :func:`load_openood` reads one such set the
same way (the same list, the same files under the same root, downloaded by pytorch-ood's own
downloader with ``download=True``) and turns a seeded subset of it into an :class:`OpenOODSet`:
images of the ID data's shape, on the ID data's value grid, with the set's ``group``
(``"near"`` or ``"far"``), so that a benchmark reports each group apart, as OpenOOD does.

Where the files are looked for:

- the image lists in ``<root>/benchmark_imglist/<benchmark>/`` (OpenOOD's own layout, beside
  the image folders), else in pytorch-ood's cache
  ``<torch.hub.get_dir()>/openood_benchmark_imglist/benchmark_imglist/<benchmark>/`` (where
  pytorch-ood puts them with ``download=True``);
- the images under ``root``, at the paths the lists give (``<root>/<set folder>/...``, e.g.
  ``root/tin/...``; OpenOOD's ``images_classic`` / ``images_largescale``).

A set is named by a key ``openood:<ID data set>:<set>``, e.g. ``openood:cifar10:svhn``;
:func:`expand_openood_names` turns the short names of the command (``openood``,
``openood_near``, ``openood_far``, ``openood:<set>``) into these keys for an ID data set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from uniad_plugin._utils import seeded_generator
from uniad_plugin.anomalies.base import (
    DEFAULT_LEVELS,
    _check_square_image_set,
    grid_name,
    to_grid,
)
from uniad_plugin.anomalies.ood import OODSet, _to_channels
from uniad_plugin.imglists import find_imglist

__all__ = [
    "BENCHMARKS",
    "GROUPS",
    "OPENOOD_NAMES",
    "OpenOODSet",
    "OpenOODSpec",
    "expand_openood_names",
    "load_openood",
    "openood_specs",
]

#: ID data set -> pytorch-ood's OpenOOD v1.5 benchmark of it (``pytorch_ood.benchmark.img``)
BENCHMARKS: dict[str, str] = {
    "cifar10": "CIFAR10_OpenOOD",
    "cifar100": "CIFAR100_OpenOOD",
    "imagenet200": "ImageNet200_OpenOOD",
    "imagenet": "ImageNet_OpenOOD",
}
#: the groups of OpenOOD's OOD sets, reported apart
GROUPS: tuple[str, ...] = ("near", "far")
#: crop ratio of the evaluation transform of each ID data set (resize to ``size / crop``,
#: center crop to ``size``): 1 for the 32x32 sets, ImageNet's 224 / 256 for the large ones
CROP: dict[str, float] = {"cifar10": 1.0, "cifar100": 1.0, "imagenet200": 0.875, "imagenet": 0.875}
#: the short names of the command: every set of the ID data's benchmark, or one group
OPENOOD_NAMES: tuple[str, ...] = ("openood", "openood_near", "openood_far")
_PREFIX = "openood:"
_SOURCE = "pytorch_ood.dataset.img.ImageListDataset (OpenOOD v1.5 image list)"


@dataclass(frozen=True)
class OpenOODSpec:
    """One OOD test set of an OpenOOD v1.5 benchmark, as pytorch-ood defines it.

    :param dataset: the ID data set (a key of :data:`BENCHMARKS`)
    :param benchmark: pytorch-ood's benchmark class, e.g. ``"CIFAR10_OpenOOD"``
    :param name: pytorch-ood's name of the set, e.g. ``"TinyImageNet"``
    :param group: ``"near"`` or ``"far"``
    :param subdir: folder of the benchmark's image lists (``benchmark_imglist/<subdir>``)
    :param imglist: file name of the set's image list
    """

    dataset: str
    benchmark: str
    name: str
    group: str
    subdir: str
    imglist: str

    @property
    def key(self) -> str:
        """``openood:<dataset>:<set>``, e.g. ``openood:cifar10:tinyimagenet``."""
        return f"{_PREFIX}{self.dataset}:{self.name.lower()}"


def _benchmark_class(dataset: str) -> Any:
    if dataset not in BENCHMARKS:
        raise ValueError(
            f"OpenOOD sets are defined for the ID data sets {', '.join(BENCHMARKS)}, "
            f"got {dataset!r}"
        )
    from pytorch_ood.benchmark import img

    cls = getattr(img, BENCHMARKS[dataset], None)
    needed = ("_subdir", "_ood_imglists", "_near_ood", "_far_ood")
    if cls is None or not all(hasattr(cls, a) for a in needed):
        raise ValueError(
            f"the installed pytorch-ood has no image-list benchmark {BENCHMARKS[dataset]} "
            "(OpenOOD v1.5); install pytorch-ood >= 0.4"
        )
    return cls


@cache
def openood_specs(dataset: str) -> tuple[OpenOODSpec, ...]:
    """The OOD test sets of ``dataset``'s OpenOOD v1.5 benchmark, near-OOD first, in
    pytorch-ood's order (read from its benchmark class).

    :raises ValueError: if ``dataset`` has no OpenOOD benchmark
    """
    cls = _benchmark_class(dataset)
    near, far = set(cls._near_ood), set(cls._far_ood)
    specs = [
        OpenOODSpec(dataset, cls.__name__, name, "near" if name in near else "far", cls._subdir, f)
        for name, f in cls._ood_imglists
        if name in near | far
    ]
    return tuple(sorted(specs, key=lambda s: GROUPS.index(s.group)))


def _spec(key: str) -> OpenOODSpec:
    dataset, _, name = (
        key[len(_PREFIX) :].partition(":") if key.startswith(_PREFIX) else ("", "", "")
    )
    if dataset in BENCHMARKS:
        for spec in openood_specs(dataset):
            if spec.name.lower() == name:
                return spec
    raise ValueError(
        f"unknown OpenOOD set {key!r}; expected openood:<ID data set>:<set>, e.g. "
        f"{openood_specs('cifar10')[0].key}"
    )


def expand_openood_names(names: Sequence[str], dataset: str) -> list[str]:
    """The OOD set names with the OpenOOD short names made keys of ``dataset``'s benchmark:
    ``openood`` (every set), ``openood_near``, ``openood_far`` (one group) and
    ``openood:<set>``; keys ``openood:<data set>:<set>`` and other names are kept. Repeats are
    dropped.

    :raises ValueError: if ``dataset`` has no OpenOOD benchmark, or a set is not in it
    """
    out: list[str] = []
    for name in names:
        if name in OPENOOD_NAMES or (name.startswith(_PREFIX) and name.count(":") == 1):
            specs = openood_specs(dataset) if dataset in BENCHMARKS else None
            if specs is None:
                raise ValueError(
                    f"the OOD set {name!r} needs an ID data set with an OpenOOD benchmark "
                    f"({', '.join(BENCHMARKS)}), got {dataset!r}"
                )
            if name in OPENOOD_NAMES:
                group = name.partition("_")[2]
                keys = [s.key for s in specs if group in ("", s.group)]
            else:
                keys = [s.key for s in specs if s.name.lower() == name[len(_PREFIX) :]]
                if not keys:
                    raise ValueError(
                        f"{BENCHMARKS[dataset]} has no OOD set {name[len(_PREFIX) :]!r}; its "
                        f"sets: {', '.join(s.name.lower() for s in specs)}"
                    )
        elif name.startswith(_PREFIX):
            keys = [_spec(name).key]
        else:
            keys = [name]
        out.extend(k for k in keys if k not in out)
    return out


def short_names() -> list[str]:
    """The OpenOOD names the command accepts: :data:`OPENOOD_NAMES` and ``openood:<set>`` for
    every set of every benchmark."""
    sets = dict.fromkeys(f"{_PREFIX}{s.name.lower()}" for d in BENCHMARKS for s in openood_specs(d))
    return [*OPENOOD_NAMES, *sets]


def is_openood(name: str) -> bool:
    """Whether ``name`` is an OpenOOD set name or key."""
    return name in OPENOOD_NAMES or name.startswith(_PREFIX)


def display_name(name: str) -> str:
    """pytorch-ood's name of the OpenOOD set of key ``name`` with its group, e.g.
    ``"MNIST (far)"``; other names as they are."""
    try:
        spec = _spec(name)
    except ValueError:
        return name
    return f"{spec.name} ({spec.group})"


def _subset(total: int, n: int | None, seed: int, part: str) -> Tensor:
    """Seeded subset (sorted) of the even (``"report"``) or odd (``"validation"``) positions
    of a list of ``total`` entries: the two parts never share an entry, whatever the seeds."""
    pool = torch.arange(0 if part == "report" else 1, total, 2)
    if n is None or n >= len(pool):
        return pool
    pick = torch.randperm(len(pool), generator=seeded_generator(seed))[:n]
    return pool[pick].sort().values


class OpenOODSet(OODSet):
    """An OpenOOD OOD test set (kind ``"OOD"``) with its ``group``, ``"near"`` or ``"far"``:
    a benchmark reports the mean over each group apart
    (see :func:`~uniad_plugin.benchmark.evaluation.summarise`).

    :param x: images of shape :math:`(N, C, H, W)`
    :param name: the set's name, e.g. ``"TinyImageNet (near)"``
    :param info: JSON-serialisable details
    :param group: ``"near"`` or ``"far"``
    :raises ValueError: on another group
    """

    def __init__(self, x: Tensor, name: str, info: dict[str, Any] | None = None, *, group: str):
        if group not in GROUPS:
            raise ValueError(f"expected group in {GROUPS}, got {group!r}")
        super().__init__(x, name, {**(info or {}), "group": group})
        self.group: str = group


def load_openood(
    key: str,
    root: str | os.PathLike,
    shape: tuple[int, int, int],
    *,
    download: bool = False,
    n: int | None = None,
    seed: int = 0,
    levels: int | None = DEFAULT_LEVELS,
    split: str = "report",
) -> OpenOODSet:
    """One OOD test set of an OpenOOD v1.5 benchmark, read as pytorch-ood's benchmark reads it
    (its image list, :class:`~pytorch_ood.dataset.img.ImageListDataset` under ``root``, RGB),
    as an :class:`OpenOODSet` of images of ``shape`` in [0, 1].

    The images go through the ID data's evaluation transform (resize of the shorter side and
    center crop: to the side for the 32x32 data sets, to ``side / 0.875`` then the side for the
    ImageNet ones), are decoded to 8-bit (so on the grid ``k / 255`` by construction), converted
    to ``shape``'s channels and put on the grid ``levels``. The set is named
    ``"<name> (<group>)"``, e.g. ``"TinyImageNet (near)"``.

    :param key: ``openood:<ID data set>:<set>`` (see :func:`expand_openood_names`)
    :param root: folder the image lists' paths are relative to
    :param shape: image shape :math:`(C, H, W)` with ``H == W``, ``C`` in {1, 3}
    :param download: let pytorch-ood fetch OpenOOD's image lists and the set's images
        (``gdown`` and internet needed)
    :param n: at most this many images, a random subset chosen with ``seed`` (kept in list
        order); ``None``: all of the part
    :param split: ``"report"`` (the list's even positions) or ``"validation"`` (the odd ones):
        the two never share an image
    :raises ValueError: on an unknown key, a bad shape or split, or files that cannot be read
    :raises FileNotFoundError: if the image list or images are missing (one line: what, where,
        and ``download=True``)
    """
    spec = _spec(key)
    c, h, levels = _check_square_image_set(shape, n, levels)
    w = h
    if split not in ("report", "validation"):
        raise ValueError(f"expected split 'report' or 'validation', got {split!r}")
    root = Path(root).expanduser()
    what = f"OpenOOD set {spec.name} ({spec.group}-OOD of {spec.benchmark})"
    imglist = find_imglist(spec.subdir, spec.imglist, root, download)
    if download:
        root.mkdir(parents=True, exist_ok=True)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{what}: data root {str(root)!r} does not exist; pass root=DIR with "
            "OpenOOD's image folders inside, or download=True"
        )

    from pytorch_ood.dataset.img import ImageListDataset

    from uniad_plugin._images import eval_transform, load_images, missing_files

    data = ImageListDataset(
        str(root), str(imglist), transform=eval_transform(h, CROP[spec.dataset])
    )
    if len(data) == 0:
        raise ValueError(f"{what}: the image list {imglist} lists no image")
    idx = _subset(len(data), n, seed, split)
    missing = missing_files([data.files[i] for i in idx.tolist()])
    if missing and download:
        from pytorch_ood.benchmark.img.openood import _download_openood_dataset

        for folder in dict.fromkeys(Path(p).relative_to(root).parts[0] for p in missing):
            try:
                _download_openood_dataset(folder, str(root))
            except Exception as e:  # noqa: BLE001 - e.g. gdown not installed, no network
                raise FileNotFoundError(
                    f"{what}: images missing under {str(root)!r} and the download of "
                    f"{folder!r} failed: {type(e).__name__}: {e}"
                ) from e
        missing = missing_files(missing)
    if missing:
        folder = Path(missing[0]).relative_to(root).parts[0]
        raise FileNotFoundError(
            f"{what}: {len(missing)} of {len(idx)} listed images missing under {str(root)!r}; "
            f"pass download=True or put OpenOOD's {folder!r} folder there (first missing: "
            f"{missing[0]})"
        )
    try:
        x, _ = load_images(data, idx)
    except Exception as e:  # noqa: BLE001 - PIL's errors on broken files
        raise ValueError(f"{what}: cannot read the images under {str(root)!r}: {e}") from e
    x = to_grid(_to_channels(x, c), levels, (0.0, 1.0)).contiguous()
    info = {
        "dataset": spec.name,
        "benchmark": spec.benchmark,
        "imglist": str(imglist),
        "root": str(root),
        "split": split,
        "n": len(idx),
        "n_total": len(data),
        "seed": seed,
        "shape": [c, h, w],
        "source": _SOURCE,
        "grid_levels": levels,
    }
    return OpenOODSet(x, grid_name(f"{spec.name} ({spec.group})", levels), info, group=spec.group)
