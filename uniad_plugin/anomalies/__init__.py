"""The three classes of anomalous inputs as torch datasets labelled ``-1``.

- OOD (``kind="OOD"``): natural data from another distribution, :mod:`.ood`, :mod:`.real`
  and :mod:`.openood` (OpenOOD v1.5's near- and far-OOD sets)
- AD (``kind="AD"``): adversarial examples crafted with foolbox 3, :mod:`.adversarial`
- NS (``kind="NS"``): images generated from meaningless data, :mod:`.noise`

Every set is an :class:`AnomalySet`: a float tensor ``x`` of shape :math:`(N, C, H, W)`
returned as ``(x[i], -1)``, with ``kind``, ``name`` and a JSON-serialisable ``info``. Every
generator puts its images on a value grid (``levels``: values ``k / levels``, default
:data:`DEFAULT_LEVELS` = 255, 8-bit) like the ID data's, and records it in
``info["grid_levels"]``; continuous sets (``levels=None``) are an explicit opt-in, named
``"... (continuous)"``.
"""

from __future__ import annotations

from uniad_plugin.anomalies.adversarial import (
    ATTACKS,
    AdversarialOptions,
    AdversarialSet,
    AttackSpec,
    WorkSharing,
    make_adversarial,
)
from uniad_plugin.anomalies.base import DEFAULT_LEVELS, KINDS, AnomalySet, is_on_grid, to_grid
from uniad_plugin.anomalies.noise import (
    NoiseSet,
    gaussian_noise,
    noisy_id,
    salt_and_pepper,
    uniform_noise,
)
from uniad_plugin.anomalies.ood import (
    FONT_SPLITS,
    PHOTO_SPLITS,
    OODSet,
    font_letters,
    photo_patches,
)
from uniad_plugin.anomalies.openood import OpenOODSet, load_openood
from uniad_plugin.anomalies.real import OOD_DATASETS, load_image_folder, load_ood

__all__ = [
    "KINDS",
    "DEFAULT_LEVELS",
    "AnomalySet",
    "to_grid",
    "is_on_grid",
    "ATTACKS",
    "AttackSpec",
    "AdversarialOptions",
    "AdversarialSet",
    "WorkSharing",
    "make_adversarial",
    "NoiseSet",
    "gaussian_noise",
    "uniform_noise",
    "salt_and_pepper",
    "noisy_id",
    "OODSet",
    "FONT_SPLITS",
    "PHOTO_SPLITS",
    "OOD_DATASETS",
    "font_letters",
    "photo_patches",
    "load_ood",
    "load_image_folder",
    "OpenOODSet",
    "load_openood",
]
