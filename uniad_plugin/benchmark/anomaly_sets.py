"""The anomaly sets of a run, by name: OOD sets, adversarial sets and noise sets.

:func:`parse_attacks` turns attack specs (``"pgd_linf@0.1,0.2"``) into budgets;
:func:`load_ood_sets`, :func:`adversarial_sets` and :func:`noise_sets` make the sets of each
class with the generators of :mod:`uniad_plugin.anomalies`; :func:`build_anomaly_sets` makes all
of them, in the order OOD, AD, NS.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from uniad_plugin import distributed as dist
from uniad_plugin.benchmark._common import ConfigError, one_line

__all__ = [
    "DEFAULT_ATTACKS",
    "NOISE_SETS",
    "OFFLINE_OOD_SETS",
    "adversarial_sets",
    "attack_norms",
    "build_anomaly_sets",
    "check_choice",
    "FOLDER_PREFIX",
    "check_ood_names",
    "load_ood_sets",
    "noise_sets",
    "ood_set_names",
    "parse_attacks",
]

#: default attacks, at the profile's budgets: the five classic ones (their perturbation reaches
#: the background of MNIST-like images) and the two object-confined PGD variants (the
#: background is untouched, so a count of non-zero pixels cannot see them)
DEFAULT_ATTACKS: tuple[str, ...] = (
    "fgsm",
    "pgd_linf",
    "pgd_l2",
    "deepfool",
    "cw_l2",
    "pgd_linf_obj",
    "pgd_l2_obj",
)
#: noise sets and OOD sets offered by the command (real OOD sets need files under a data root)
NOISE_SETS: tuple[str, ...] = ("gaussian", "uniform", "salt_pepper", "noisy_id")
OFFLINE_OOD_SETS: tuple[str, ...] = ("letters", "photos")


def attack_norms() -> dict[str, str]:
    from uniad_plugin.anomalies import ATTACKS

    return {name: spec.norm for name, spec in ATTACKS.items()}


def parse_attacks(
    specs: Sequence[str], default_eps: Mapping[str, Sequence[float]]
) -> dict[str, tuple[float, ...]]:
    """Parse attack specs ``"name"`` (default budgets) or ``"name@eps1,eps2"``, each budget a
    number or a fraction (``pgd_linf@2/255,8/255``).

    :param specs: e.g. ``["fgsm", "pgd_l2@0.5,1", "pgd_linf@8/255"]``
    :param default_eps: budgets per attack norm (``"linf"``, ``"l2"``) or per attack name
    :return: attack name -> budgets, in the order given
    :raises ConfigError: on an unknown attack, a bad or non-positive eps, or a repeated attack
    """
    from uniad_plugin.anomalies.attacks import parse_budget

    norms = attack_norms()
    out: dict[str, tuple[float, ...]] = {}
    for spec in specs:
        name, _, eps_text = str(spec).partition("@")
        name = name.strip().lower()
        if name not in norms:
            raise ConfigError(
                f"unknown attack {name!r}; choose from {', '.join(norms)} "
                "(optionally with budgets, e.g. pgd_linf@0.1,0.2)"
            )
        if name in out:
            raise ConfigError(f"attack {name!r} was given twice; list its budgets once: {name}@a,b")
        if eps_text:
            try:
                eps = tuple(parse_budget(e) for e in eps_text.split(","))
            except (ValueError, ZeroDivisionError):
                raise ConfigError(
                    f"bad budget in {spec!r}; expected numbers or fractions, e.g. "
                    f"{name}@0.1,0.2 or {name}@8/255"
                ) from None
            if not all(math.isfinite(e) and e > 0 for e in eps):
                raise ConfigError(f"expected positive finite budgets in {spec!r}")
        else:
            eps = tuple(default_eps.get(name, default_eps.get(norms[name], ())))
            if not eps:
                raise ConfigError(f"no default budget for {name!r}; give one, e.g. {name}@0.1")
        out[name] = tuple(dict.fromkeys(eps))
    return out


def ood_set_names() -> list[str]:
    """The OOD set names of the command: offline, torchvision / pytorch-ood sets, and the
    OpenOOD names (``openood``, ``openood_near``, ``openood_far``, ``openood:<set>``)."""
    from uniad_plugin.anomalies import OOD_DATASETS
    from uniad_plugin.anomalies.openood import short_names

    real = [n for n in OOD_DATASETS if n not in OFFLINE_OOD_SETS]
    return [*OFFLINE_OOD_SETS, *real, *short_names()]


#: prefix of the key of an OOD set read from a folder of the user's images
FOLDER_PREFIX = "folder:"


def _is_folder(name: str) -> bool:
    """Whether the OOD set ``name`` means a folder: ``folder:PATH``, a path (with a separator,
    or starting with ``.`` or ``~``) or a word that is no set name but an existing folder."""
    if name.startswith(FOLDER_PREFIX) or os.sep in name or name.startswith((".", "~")):
        return True
    return "/" in name or (name.strip().lower() not in ood_set_names() and Path(name).is_dir())


def _folder_key(name: str) -> str:
    """``folder:<absolute path>`` of an OOD folder.

    :raises ConfigError: if it does not exist or holds no image file
    """
    from uniad_plugin.anomalies.real import image_files

    path = Path(name.removeprefix(FOLDER_PREFIX)).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"OOD folder {name!r} does not exist (ood= takes OOD set names and folders of images)"
        )
    if not image_files(path):
        raise ConfigError(
            f"no image files in the OOD folder {name!r} (nor in its subfolders); expected e.g. "
            ".png or .jpg files"
        )
    return FOLDER_PREFIX + str(path.resolve())


def folder_set_name(key: str) -> str:
    """The name an OOD folder's set is reported under: the folder's name."""
    return Path(key.removeprefix(FOLDER_PREFIX)).name


def check_ood_names(names: Sequence[str], dataset: str) -> list[str]:
    """OOD set names checked and with the OpenOOD names made keys of ``dataset``'s OpenOOD
    benchmark (``openood`` -> ``openood:cifar10:cifar100``, ...; see
    :func:`~uniad_plugin.anomalies.openood.expand_openood_names`); keys
    ``openood:<data set>:<set>`` are accepted as they are. A folder of images (a path, or
    ``folder:PATH``) becomes the key ``folder:<absolute path>`` (see :func:`load_ood_sets`).

    :raises ConfigError: on an unknown name, the ID data set itself (``mnist`` on MNIST), an
        OpenOOD name that ``dataset`` has no set of, a folder that does not exist or holds no
        image, or two sets of one name
    """
    from uniad_plugin.anomalies.openood import expand_openood_names

    folders = {i: _folder_key(n) for i, n in enumerate(names) if _is_folder(n)}
    others = [n for i, n in enumerate(names) if i not in folders]
    keys = [n.strip().lower() for n in others]
    plain = [n for n in others if n.strip().lower().count(":") < 2]
    check_choice("OOD set", plain, ood_set_names())
    if dataset in keys:
        raise ConfigError(f"the OOD set {dataset!r} is the in-distribution data set itself")
    try:
        expanded = expand_openood_names(keys, dataset)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    taken = set(expanded)
    for key in dict.fromkeys(folders.values()):
        name = folder_set_name(key)
        if name.lower() in taken:
            raise ConfigError(
                f"two OOD sets would be named {name!r} (the folder {key.removeprefix(FOLDER_PREFIX)!r}"
                " and another set or folder); rename the folder"
            )
        taken.add(name.lower())
        expanded.append(key)
    return expanded


def check_choice(kind: str, names: Sequence[str], allowed: Sequence[str]) -> list[str]:
    out = []
    for name in names:
        key = name.strip().lower()
        if key not in allowed:
            raise ConfigError(f"unknown {kind} {name!r}; choose from {', '.join(allowed)}")
        if key not in out:
            out.append(key)
    return out


def load_ood_sets(
    names: Sequence[str],
    shape: tuple[int, int, int],
    *,
    optional: Sequence[str] = (),
    n: int = 1000,
    data_root: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
    levels: int | None = 255,
    split: str = "report",
    crop: float = 1.0,
) -> tuple[list[Any], list[str]]:
    """Load OOD sets by name: ``letters`` and ``photos`` offline, real sets from ``data_root``
    (torchvision's, pytorch-ood's and OpenOOD's: keys ``openood:<ID data set>:<set>``, see
    :func:`check_ood_names`) and folders of the user's images (keys ``folder:PATH``, read by
    :func:`~uniad_plugin.anomalies.real.load_image_folder` and named after the folder).

    :param names: set names
    :param shape: image shape ``(C, H, W)`` the sets are converted to
    :param optional: names that are left out with a note when they cannot be loaded
    :param n: images per set
    :param levels: the ID data's value grid the sets are put on (``None``: continuous)
    :param split: fonts and photos of the ``"report"`` or the ``"validation"`` sources (and
        the disjoint halves of the OpenOOD sets)
    :param crop: crop ratio of the ID data's evaluation transform, for the folders (1 for the
        32x32 data sets, 0.875 for ImageNet's)
    :return: the sets and notes about optional sets left out (one note for all OpenOOD sets)
    :raises ConfigError: if a set that is not optional cannot be loaded
    """
    from uniad_plugin import anomalies as an
    from uniad_plugin.anomalies.openood import display_name, is_openood

    sets: list[Any] = []
    notes: list[str] = []
    missing: list[str] = []
    openood_missing: list[str] = []
    for name in names:
        if name == "letters":
            sets.append(an.font_letters(n, shape, seed=seed, split=split, levels=levels))
        elif name == "photos":
            sets.append(an.photo_patches(n, shape, seed=seed, split=split, levels=levels))
        elif name.startswith(FOLDER_PREFIX):
            folder = name.removeprefix(FOLDER_PREFIX)
            try:
                sets.append(
                    an.load_image_folder(folder, shape, n=n, seed=seed, levels=levels, crop=crop)
                )
            except (OSError, ValueError) as e:
                raise ConfigError(f"cannot load the OOD folder {folder!r}: {one_line(e)}") from e
        elif split == "validation" and not getattr(an.OOD_DATASETS.get(name), "has_train", True):
            # a set without a training split has no validation images apart from the reported
            reason = f"{name} has no training split, so no validation images apart from the reported ones"
            if name not in optional:
                raise ConfigError(
                    f"cannot use the OOD set {name!r} on the validation split: {reason}"
                )
            notes.append(f"OOD set {name!r} left out of the validation split: {reason}")
        else:
            try:
                if data_root is None:
                    raise ConfigError(
                        f"the OOD set {name!r} needs data_root=DIR (or download=True)"
                    )
                grid = {"download": download, "n": n, "seed": seed, "levels": levels}
                if is_openood(name):
                    sets.append(an.load_openood(name, data_root, shape, split=split, **grid))
                else:
                    sets.append(an.load_ood(name, data_root, shape, split=split, **grid))
            except Exception as e:  # noqa: BLE001
                # the OpenOOD loader's messages are one line of bounded length: keep all of it
                reason = f"{type(e).__name__}: {' '.join(str(e).split())}"
                reason = reason if is_openood(name) else one_line(e)
                if name in optional:
                    missing.append(display_name(name))
                    if not is_openood(name):
                        notes.append(f"OOD set {name!r} left out: {reason}")
                    elif not openood_missing:  # one note for all of them: the first reason
                        notes.append(f"OpenOOD sets left out: {reason}")
                    if is_openood(name):
                        openood_missing.append(name)
                    continue
                if isinstance(e, ConfigError):
                    raise
                raise ConfigError(f"cannot load the OOD set {name!r}: {reason}") from e
    if missing:
        kept = [getattr(a, "name", "?") for a in sets]
        synthetic = "" if any(getattr(a, "info", {}).get("root") for a in sets) else " (synthetic)"
        layout = (
            "(torchvision's layout; OpenOOD's image lists and folders for the OpenOOD sets)"
            if openood_missing
            else "in torchvision's layout"
        )
        notes.insert(
            0,
            f"real OOD data missing: {', '.join(missing)} not found under "
            f"{str(data_root)!r}, so the OOD class holds only {', '.join(kept) or 'no set'}"
            f"{synthetic}; put them there {layout} or pass download=True",
        )
    return sets, notes


def adversarial_sets(
    model: nn.Module,
    attack_data: Dataset,
    attacks: Mapping[str, Sequence[float]],
    *,
    n_attack: int | None = None,
    attack_params: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    levels: int | None = 255,
) -> list[Any]:
    """One adversarial set per attack and budget, crafted from ``attack_data``, rounded onto
    the value grid ``levels`` and re-checked (``None``: continuous).

    :param model: the classifier that is attacked
    :param attack_data: ID samples the adversarials are crafted from (not the ID test set)
    :param attacks: attack name -> budgets (see :func:`parse_attacks`)
    :param n_attack: attack at most this many correctly classified sources per attack
    :param attack_params: foolbox keyword overrides per attack name
    :param cache_dir: cache of the run; the sets are cached in its ``adversarial`` folder
    """
    from uniad_plugin import anomalies as an

    adv_dir = Path(cache_dir) / "adversarial" if cache_dir is not None else None
    return [
        an.make_adversarial(
            model,
            attack_data,
            attack,
            float(eps),
            device=device,
            seed=seed,
            cache_dir=adv_dir,
            progress=progress,
            max_samples=n_attack,
            attack_params=dict((attack_params or {}).get(attack, {})) or None,
            levels=levels,
            sharing=dist,  # the processes of a distributed run share each attack
        )
        for attack, budgets in attacks.items()
        for eps in budgets
    ]


def noise_sets(
    names: Sequence[str],
    shape: tuple[int, int, int],
    attack_data: Dataset,
    *,
    n: int = 1000,
    seed: int = 0,
    levels: int | None = 255,
) -> list[Any]:
    """Noise sets by name (``gaussian``, ``uniform``, ``salt_pepper``, ``noisy_id``), on the
    value grid ``levels`` (``None``: continuous).

    :param names: set names; unknown names are passed over
    :param shape: image shape ``(C, H, W)``
    :param attack_data: ID samples ``noisy_id`` draws its images from
    :param n: images per set (``noisy_id``: at most this many)
    """
    from uniad_plugin import anomalies as an

    makers = {
        "gaussian": lambda: an.gaussian_noise(n, shape, seed=seed, levels=levels),
        "uniform": lambda: an.uniform_noise(n, shape, seed=seed, levels=levels),
        "salt_pepper": lambda: an.salt_and_pepper(n, shape, seed=seed, levels=levels),
        "noisy_id": lambda: an.noisy_id(attack_data, seed=seed, max_samples=n, levels=levels),
    }
    return [makers[name]() for name in names if name in makers]


#: keyword arguments of :func:`build_anomaly_sets` besides the set names, and where they go
_OOD_OPTIONS = {
    "optional_ood": "optional",
    "n_ood": "n",
    "data_root": "data_root",
    "download": "download",
}
_ADV_OPTIONS = ("n_attack", "attack_params", "cache_dir", "device", "progress", "levels")


def build_anomaly_sets(
    model: nn.Module,
    attack_data: Dataset,
    shape: tuple[int, int, int],
    *,
    attacks: Mapping[str, Sequence[float]],
    noise: Sequence[str],
    ood: Sequence[str],
    prebuilt: Sequence[Any] = (),
    n_noise: int = 1000,
    **options: Any,
) -> tuple[list[Any], list[str]]:
    """The anomaly sets of one run, in the order OOD, AD, NS.

    :param model: the classifier that is attacked
    :param attack_data: ID samples the adversarials are crafted from (not the ID test set);
        ``noisy_id`` also draws its images from here
    :param shape: image shape ``(C, H, W)``
    :param attacks: attack name -> budgets (see :func:`parse_attacks`)
    :param noise: noise set names (``gaussian``, ``uniform``, ``salt_pepper``, ``noisy_id``)
    :param ood: OOD set names (``letters``, ``photos`` offline; real sets need ``data_root``)
    :param prebuilt: sets made beforehand (e.g. OOD sets from :func:`load_ood_sets`), put first
    :param n_noise: images per noise set (``noisy_id``: at most this many)
    :param options: ``seed``; ``levels`` (the value grid, default 255; ``None``: continuous)
        and ``split`` (``"report"`` or ``"validation"`` fonts and photos); ``optional_ood``, ``n_ood``, ``data_root``, ``download`` of
        :func:`load_ood_sets` (``optional``, ``n``, ...); ``n_attack``, ``attack_params``,
        ``cache_dir``, ``device``, ``progress`` of :func:`adversarial_sets`
    :return: the sets and notes about optional sets left out
    :raises ConfigError: if a requested real OOD set cannot be loaded
    :raises TypeError: on an unknown keyword argument
    """
    unknown = set(options) - {"seed", "split", *_OOD_OPTIONS, *_ADV_OPTIONS}
    if unknown:
        raise TypeError(f"expected keyword arguments of build_anomaly_sets, got {sorted(unknown)}")
    seed = options.get("seed", 0)
    ood_kw = {key: options[name] for name, key in _OOD_OPTIONS.items() if name in options}
    levels = options.get("levels", 255)
    split = options.get("split", "report")
    sets, notes = load_ood_sets(ood, shape, seed=seed, levels=levels, split=split, **ood_kw)
    adv_kw = {name: options[name] for name in _ADV_OPTIONS if name in options}
    return [
        *prebuilt,
        *sets,
        *adversarial_sets(model, attack_data, attacks, seed=seed, **adv_kw),
        *noise_sets(noise, shape, attack_data, n=n_noise, seed=seed, levels=levels),
    ], notes
