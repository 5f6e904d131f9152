"""The three classes of anomalous inputs as torch datasets labelled ``-1``.

- OOD (``kind="OOD"``): natural data from another distribution, :mod:`.ood`
- AD (``kind="AD"``): adversarial examples crafted with foolbox 3, :mod:`.adversarial`
- NS (``kind="NS"``): images generated from meaningless data, :mod:`.noise`

Every set is an :class:`AnomalySet`: a float tensor ``x`` of shape :math:`(N, C, H, W)`
returned as ``(x[i], -1)``, with ``kind``, ``name`` and a JSON-serialisable ``info``.
"""

from __future__ import annotations

from uniad_plugin.anomalies.adversarial import ATTACKS, AdversarialSet, AttackSpec, make_adversarial
from uniad_plugin.anomalies.base import KINDS, AnomalySet
from uniad_plugin.anomalies.noise import (
    NoiseSet,
    gaussian_noise,
    noisy_id,
    salt_and_pepper,
    uniform_noise,
)
from uniad_plugin.anomalies.ood import (
    OOD_DATASETS,
    OODSet,
    font_letters,
    load_ood,
    photo_patches,
)

__all__ = [
    "KINDS",
    "AnomalySet",
    "ATTACKS",
    "AttackSpec",
    "AdversarialSet",
    "make_adversarial",
    "NoiseSet",
    "gaussian_noise",
    "uniform_noise",
    "salt_and_pepper",
    "noisy_id",
    "OODSet",
    "OOD_DATASETS",
    "font_letters",
    "photo_patches",
    "load_ood",
]
