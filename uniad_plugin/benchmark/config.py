"""What one run of the benchmark does, as one frozen value: :class:`RunConfig`.

A run's defaults come from the :class:`~uniad_plugin.benchmark.profiles.Profile` of its data
set (:mod:`uniad_plugin.benchmark.profiles`): :data:`DIGITS` (scikit-learn's digits, offline),
:data:`MNIST`, :data:`CIFAR10` and :data:`FOLDER` (the user's ``ImageFolder`` trees), each with
a ``fast`` variant (e.g. :data:`DIGITS_FAST`) with small sizes for tests and a quick look.
Fields of a :class:`RunConfig` left at ``None`` take the profile's value.

:meth:`RunConfig.resolve` is the one place where a configuration is checked: it raises
:class:`ConfigError` (unknown names, bad sizes, nothing to evaluate, a bad device) before any
heavy work, and returns the :class:`RunPlan` the engine (:func:`~uniad_plugin.benchmark.run.run`)
follows.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uniad_plugin.benchmark._common import ConfigError
from uniad_plugin.benchmark.anomaly_sets import (
    DEFAULT_ATTACKS,
    NOISE_SETS,
    attack_norms,
    check_choice,
    check_ood_names,
    parse_attacks,
)
from uniad_plugin.benchmark.model_cache import TORCHVISION_PREFIX, default_cache_dir
from uniad_plugin.benchmark.profiles import (
    CIFAR10,
    CIFAR10_FAST,
    DIGITS,
    DIGITS_FAST,
    FOLDER,
    FOLDER_FAST,
    MNIST,
    MNIST_FAST,
    PROFILES,
    Profile,
)
from uniad_plugin.benchmark.wiring import (
    DEFAULT_DETECTORS,
    SANITY_DETECTORS,
    check_detector_names,
)

__all__ = [
    "CIFAR10",
    "CIFAR10_FAST",
    "FOLDER",
    "FOLDER_FAST",
    "DIGITS",
    "DIGITS_FAST",
    "MNIST",
    "MNIST_FAST",
    "ConfigError",
    "Profile",
    "RunConfig",
    "RunPlan",
]


@dataclass(frozen=True)
class RunConfig:
    """Everything one run of the benchmark does; ``None`` takes the profile's default.

    :param dataset: ID data, a key of :data:`PROFILES` (``"digits"``, ``"mnist"``,
        ``"cifar10"``, ``"cifar100"``, ``"imagenet200"``, ``"imagenet"``, ``"folder"``)
    :param fast: use the profile's fast variant (small sizes)
    :param detectors: detector names (default :data:`DEFAULT_DETECTORS`)
    :param attacks: attack specs ``"name"`` or ``"name@eps1,eps2"`` (default: all five)
    :param eps: default budgets of attacks given without ``@``, by norm (``"linf"``,
        ``"l2"``) or attack name; a norm replaces the profile's per-attack budgets of that norm
    :param noise: noise set names (default: all four)
    :param ood: OOD set names (default: the profile's; real sets need ``data_root``);
        ``openood``, ``openood_near``, ``openood_far`` and ``openood:<set>`` name the sets of
        the data set's OpenOOD v1.5 benchmark
    :param n_test: ID test images scored (the data sets read from ``data_root`` only)
    :param n_noise: images per noise set
    :param n_ood: images per OOD set
    :param n_attack: correctly classified sources attacked per attack and budget
    :param n_fit: fit the detectors on this many training samples (default: all)
    :param attack_params: foolbox overrides per attack, e.g. ``{"cw_l2": {"steps": 50}}``,
        merged onto the profile's
    :param detector_kwargs: constructor overrides per detector name
    :param model_path: a ``state_dict`` file of the user's classifier (see
        :func:`~uniad_plugin.benchmark.model_cache.load_model`)
    :param arch: ``"module:function"`` (or ``"file.py:function"``, or the function) building
        the architecture, or ``"torchvision:NAME"`` (``torchvision.models.NAME(weights=None,
        num_classes=...)``, see :func:`~uniad_plugin.benchmark.model_cache.torchvision_architecture`)
        (default: the profile's reference model). A user's architecture is never trained
        unless asked: give its weights (``model_path``), ``pretrained=True`` or ``train=True``
    :param train: train ``arch`` on the ID training data (cached as the reference models
        are); the reference model (no ``arch``) is always trained
    :param pretrained: ``arch`` returns a trained model (its own weights): evaluate it as it
        is, with no ``model_path`` and no training
    :param epochs: training epochs of the reference model (or of ``arch`` with ``train``)
    :param data_root: folder of torchvision data sets (MNIST, CIFAR-10, real OOD sets)
    :param download: let torchvision download missing data sets
    :param seed: seed of every random choice (splits, training, attacks, noise, detectors)
    :param device: ``"cpu"`` or ``"cuda[:i]"``
    :param cache_dir: cache of trained models and adversarials (default
        :func:`~uniad_plugin.benchmark.model_cache.default_cache_dir`)
    :param out_dir: output folder (``None``: write nothing)
    :param plots: draw ROC curves and histograms (PNG)
    :param progress: show progress bars
    :param batch_size: batch size of fitting and scoring
    :param sanity: add the model-free sanity baselines (``PixelGrid``, ``PixelCount``,
        ``PixelKNN``) to the detectors
    :param continuous: generate continuous anomaly sets (off the data's value grid, labelled
        ``(continuous)`` in every table) instead of sets on the grid
    :param train_dir: ``ImageFolder`` tree of the training images (``dataset="folder"``)
    :param test_dir: ``ImageFolder`` tree of the test images (``dataset="folder"``), divided into
        the ID test set, the attack split and the held-out set
    :param image_size: side the images of ``dataset="folder"`` (default 32), ``"imagenet200"``
        and ``"imagenet"`` (default 224) are resized and cropped to (``None``: the profile's)
    :param split: ``"report"`` (the reported sets) or ``"validation"``: anomaly sets that share
        nothing with the reported ones (other seeds, fonts, photos, attack budgets and, on
        MNIST, other test images), for tuning and ablations
    :param near_ood: names of the run's OOD sets that are near-OOD (e.g. the held-out classes
        of an open-set split); the other OOD sets are far-OOD. The tables add a near- and a
        far-OOD mean, the leaderboard reports the two apart, and ``results.json`` keeps the
        names (``meta.near_ood``); it replaces OpenOOD's own groups. A name that is not one of
        the run's OOD sets is a :class:`ConfigError` (raised before the model is loaded)
    """

    dataset: str = "digits"
    fast: bool = False
    detectors: Sequence[str] | None = None
    attacks: Sequence[str] | None = None
    eps: Mapping[str, Sequence[float]] | None = None
    noise: Sequence[str] | None = None
    ood: Sequence[str] | None = None
    n_test: int | None = None
    n_noise: int | None = None
    n_ood: int | None = None
    n_attack: int | None = None
    n_fit: int | None = None
    attack_params: Mapping[str, Mapping[str, Any]] | None = None
    detector_kwargs: Mapping[str, Mapping[str, Any]] | None = None
    model_path: str | os.PathLike | None = None
    arch: str | Callable[[], nn.Module] | None = None
    train: bool = False
    pretrained: bool = False
    epochs: int | None = None
    data_root: str | os.PathLike | None = None
    download: bool = False
    seed: int = 0
    device: str | torch.device = "cpu"
    cache_dir: str | os.PathLike | None = None
    out_dir: str | os.PathLike | None = "uniad-results"
    plots: bool = True
    progress: bool = True
    batch_size: int = 256
    sanity: bool = True
    continuous: bool = False
    split: str = "report"
    train_dir: str | os.PathLike | None = None
    test_dir: str | os.PathLike | None = None
    image_size: int | None = None
    near_ood: Sequence[str] | None = None

    @property
    def profile(self) -> Profile:
        """The profile of :attr:`dataset` (its fast variant if :attr:`fast`).

        :raises ConfigError: on an unknown data set
        """
        if self.dataset not in PROFILES:
            raise ConfigError(f"expected dataset in {tuple(PROFILES)}, got {self.dataset!r}")
        return PROFILES[self.dataset][1 if self.fast else 0]

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def resolve(self) -> RunPlan:
        """Check the configuration and fill in the profile's defaults.

        :raises ConfigError: on an unknown data set, detector, attack, noise or OOD set, a bad
            budget or size, a bad device, MNIST without ``data_root``, or nothing to evaluate
        """
        return _resolve(self)


@dataclass(frozen=True)
class RunPlan:
    """A checked :class:`RunConfig` with every default filled in (made by
    :meth:`RunConfig.resolve`); what the engine runs.

    :param config: the configuration
    :param detectors: canonical detector names
    :param attacks: attack name -> budgets
    :param noise: noise set names
    :param ood: OOD set names
    :param optional_ood: OOD sets left out with a note when their files are missing
    :param n_noise: images per noise set
    :param n_ood: images per OOD set
    :param n_attack: sources attacked per attack and budget (``None``: all)
    :param n_fit: training samples the detectors are fitted on (``None``: all)
    :param attack_params: foolbox overrides per attack
    :param device: the device
    :param cache_dir: cache of models and adversarials (``None``: no cache)
    :param epochs: training epochs of the reference model
    :param n_test: ID test images (``None``: the data set's fixed split)
    :param attack_split: images of the attack split (``None``: the data set's fixed split)
    :param n_val: held-out ID images (``None``: the data set's fixed split)
    :param data_levels: the ID data's value grid (``None``: the profile's ``grid_levels``)
    """

    config: RunConfig
    detectors: tuple[str, ...]
    attacks: Mapping[str, tuple[float, ...]]
    noise: tuple[str, ...]
    ood: tuple[str, ...]
    optional_ood: tuple[str, ...] = ()
    n_noise: int = 1000
    n_ood: int = 1000
    n_attack: int | None = None
    n_fit: int | None = None
    attack_params: Mapping[str, Mapping[str, Any]] | None = None
    device: torch.device = torch.device("cpu")
    cache_dir: Path | None = None
    epochs: int | None = None
    n_test: int | None = None
    attack_split: int | None = None
    n_val: int | None = None
    data_levels: int | None = None

    @property
    def id_levels(self) -> int:
        """The ID data's value grid (``data_levels``, else the profile's)."""
        return self.data_levels if self.data_levels is not None else self.config.profile.grid_levels

    @property
    def grid_levels(self) -> int | None:
        """The value grid of the generated sets: the ID data's (``None``: continuous)."""
        return None if self.config.continuous else self.id_levels

    @property
    def image_size(self) -> int | None:
        """Side the ID images are resized and cropped to (``None``: the data set's own)."""
        c = self.config
        return c.image_size if c.image_size is not None else c.profile.image_size

    @property
    def anomaly_seed(self) -> int:
        """Seed of the generated anomaly sets: another one for the validation split."""
        return self.config.seed + (VALIDATION_SEED_OFFSET if self.validation else 0)

    @property
    def validation(self) -> bool:
        return self.config.split == "validation"


#: added to the seed of the anomaly sets of ``split="validation"``
VALIDATION_SEED_OFFSET = 1000
#: the splits of a run
SPLITS: tuple[str, ...] = ("report", "validation")


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`.

    :raises ConfigError: if it is malformed, or CUDA is asked for but not available
    """
    try:
        dev = torch.device(device)
    except Exception:  # noqa: BLE001
        raise ConfigError(f"bad device {device!r}; expected e.g. 'cpu' or 'cuda:0'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} requested but CUDA is not available; use device='cpu'"
        )
    return dev


def _default(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def _eps_defaults(
    profile: Profile, eps: Mapping[str, Sequence[float]] | None, split: str = "report"
) -> dict:
    """The profile's budgets (of the split) with ``eps`` on top; a budget per norm replaces the
    per-attack budgets of that norm."""
    base = profile.validation_eps if split == "validation" else None
    out = dict(base if base is not None else profile.eps)
    for key in eps or {}:
        for name, norm in attack_norms().items():
            if norm == key:
                out.pop(name, None)
    out.update(eps or {})
    return out


def _check_sizes(c: RunConfig) -> None:
    for name in ("epochs", "n_test", "n_noise", "n_ood", "n_attack", "n_fit", "batch_size"):
        value = getattr(c, name)
        if value is not None and value < 1:
            raise ConfigError(f"expected {name} >= 1, got {value}")
    if c.dataset in _ROOT_LAYOUT and c.data_root is None:
        raise ConfigError(
            f"expected data_root (a folder with {_ROOT_LAYOUT[c.dataset]} inside) for "
            f"{c.dataset!r}, got None"
        )
    if c.dataset == "folder" and (c.train_dir is None or c.test_dir is None):
        raise ConfigError("expected train_dir and test_dir (ImageFolder trees) for 'folder'")
    if c.image_size is not None and c.image_size < 8:
        raise ConfigError(f"expected image_size >= 8, got {c.image_size}")
    if c.image_size is not None and c.profile.image_size is None:
        sized = ", ".join(repr(k) for k, (p, _) in PROFILES.items() if p.image_size is not None)
        raise ConfigError(
            f"expected image_size only for a data set whose images are resized ({sized}), got "
            f"image_size={c.image_size} for {c.dataset!r}"
        )
    if c.split not in SPLITS:
        raise ConfigError(f"expected split in {SPLITS}, got {c.split!r}")
    if c.n_test is not None and c.profile.n_test is None:
        raise ConfigError(
            f"expected n_test only for a data set without a fixed split, got n_test={c.n_test} "
            f"for {c.dataset!r}"
        )


def _check_model_source(c: RunConfig) -> None:
    """:raises ConfigError: unless the model comes from one place: ``model_path``,
    ``pretrained`` or ``train`` (the last two with ``arch``), or the profile's reference model
    (no ``arch`` and none of them)"""
    given = [
        name
        for name, on in (
            ("model_path", c.model_path is not None),
            ("pretrained=True", c.pretrained),
            ("train=True", c.train),
        )
        if on
    ]
    if len(given) > 1:
        raise ConfigError(
            f"expected one of model_path, pretrained and train, got {' and '.join(given)}"
        )
    if c.arch is None and (c.pretrained or c.train):
        raise ConfigError(
            f"expected arch with {given[0]} (the reference model is trained anyway), got None"
        )
    if c.arch is not None and not given:
        raise ConfigError(
            f"expected model_path (the weights of arch {str(c.arch)!r}), pretrained=True (it "
            "returns a trained model) or train=True (train it on the ID training data), got "
            "none: a user's architecture is not trained unless asked"
        )
    if c.pretrained and str(c.arch).startswith(TORCHVISION_PREFIX):
        raise ConfigError(
            f"expected pretrained=True with a factory of a trained model, got arch {c.arch!r}, "
            "which is built untrained (weights=None); give its weights with model_path"
        )


#: data sets read from ``data_root``, and what they expect inside it
_ROOT_LAYOUT: Mapping[str, str] = {
    "mnist": "MNIST/raw",
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "imagenet200": "imagenet_1k and OpenOOD's benchmark_imglist/imagenet200",
    "imagenet": "imagenet/train and imagenet/val",
}


def _attack_params(profile: Profile, overrides: Mapping[str, Mapping[str, Any]] | None) -> dict:
    params = {k: dict(v) for k, v in profile.attack_params.items()}
    for k, v in (overrides or {}).items():
        params[k] = {**params.get(k, {}), **v}
    return params


def _split_sizes(c: RunConfig, profile: Profile) -> tuple[int | None, int | None, int | None]:
    """ID test images, attack split and held-out ID images of a data set without a fixed
    split (MNIST's 10,000 test images; half of them for the validation part): the test set
    first, then the attack split, then as much of the held-out set as is left.

    :raises ConfigError: if ``n_test`` leaves no room for the other two
    """
    if profile.n_test is None:
        return None, None, None
    room = 5000 if c.split == "validation" else 10000
    n_test = _default(c.n_test, profile.n_test)
    if n_test > room - 2:
        raise ConfigError(
            f"expected n_test <= {room - 2} ({room} test images in the {c.split} part, one "
            f"each left for the attack and held-out splits), got {n_test}"
        )
    # noisy_id draws from the attack split too; a full run grows it if n_attack asks
    n_src = profile.attack_split if c.fast else max(profile.attack_split, c.n_attack or 0)
    n_val = profile.n_val or 1
    attack = max(1, min(n_src, room - n_test - min(n_val, (room - n_test) // 2)))
    return n_test, attack, max(1, min(n_val, room - n_test - attack))


def _resolve(c: RunConfig) -> RunPlan:
    profile = c.profile
    device = check_device(c.device)
    detectors = check_detector_names(_default(c.detectors, DEFAULT_DETECTORS))
    if c.sanity and detectors:
        detectors += [n for n in SANITY_DETECTORS if n not in detectors]
    eps = _eps_defaults(profile, c.eps, c.split)
    attacks = parse_attacks(_default(c.attacks, DEFAULT_ATTACKS), eps)
    noise = check_choice("noise set", _default(c.noise, NOISE_SETS), NOISE_SETS)
    ood = check_ood_names(_default(c.ood, profile.ood), c.dataset)
    _check_sizes(c)
    _check_model_source(c)
    if not (detectors or attacks or noise or ood):
        raise ConfigError("nothing to evaluate")
    if not (attacks or noise or ood):
        raise ConfigError("expected at least one anomaly set (attack, noise or OOD set)")
    if not detectors:
        raise ConfigError("expected at least one detector")
    n_test, attack_split, n_val = _split_sizes(c, profile)
    return RunPlan(
        config=c,
        detectors=tuple(detectors),
        attacks=attacks,
        noise=tuple(noise),
        ood=tuple(ood),
        optional_ood=tuple(check_ood_names(profile.optional_ood, c.dataset))
        if c.ood is None
        else (),
        n_noise=_default(c.n_noise, profile.n_noise),
        n_ood=_default(c.n_ood, profile.n_ood),
        n_attack=_default(c.n_attack, profile.n_attack),
        n_fit=_default(c.n_fit, profile.n_fit),
        attack_params=_attack_params(profile, c.attack_params),
        device=device,
        cache_dir=Path(c.cache_dir) if c.cache_dir is not None else default_cache_dir(),
        epochs=_default(c.epochs, profile.epochs),
        n_test=n_test,
        attack_split=attack_split,
        n_val=n_val,
    )
