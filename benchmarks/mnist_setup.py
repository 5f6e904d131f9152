"""Shared real-MNIST setup for the scripts in ``benchmarks/``: data, a cached LeNet, anomaly sets.

Not a test: needs the MNIST IDX files (``torchvision.datasets.MNIST(root, download=False)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from pytorch_ood.metrics import OODMetrics
from torch.utils.data import DataLoader, TensorDataset

from uniad_plugin.anomalies import (
    font_letters,
    gaussian_noise,
    make_adversarial,
    noisy_id,
    photo_patches,
    salt_and_pepper,
    uniform_noise,
)
from uniad_plugin.benchmark import trained_model
from uniad_plugin.data import mnist_dataset
from uniad_plugin.models import accuracy, lenet

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"

#: (attack, eps) pairs of the real-scale evaluation (eps in L-inf for fgsm/pgd_linf, else L2)
ATTACK_GRID = [
    ("fgsm", 0.1),
    ("fgsm", 0.3),
    ("pgd_linf", 0.1),
    ("pgd_linf", 0.3),
    ("pgd_l2", 2.0),
    ("deepfool", 2.0),
    ("cw_l2", 2.0),
]


def trained_lenet(train: TensorDataset, epochs: int = 3, seed: int = 0) -> torch.nn.Module:
    """LeNet trained on MNIST as the ``uniad`` command trains it (the package's
    :func:`~uniad_plugin.benchmark.trained_model`), cached in ``benchmarks/.cache``."""
    model, _ = trained_model(
        "lenet", lenet, train, epochs=epochs, seed=seed, batch_size=128, cache_dir=CACHE
    )
    return model


def auroc(s_id: torch.Tensor, s_ood: torch.Tensor) -> float:
    """AUROC of ID scores against anomaly scores (pytorch-ood's OODMetrics)."""
    m = OODMetrics()
    labels = torch.cat([torch.zeros(len(s_id)), -torch.ones(len(s_ood))]).long()
    m.update(torch.cat([s_id, s_ood]), labels)
    return float(m.compute()["AUROC"])


@dataclass
class Suite:
    id_test: torch.Tensor
    sets: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)  # name -> (kind, x)
    info: dict[str, dict] = field(default_factory=dict)


def anomaly_suite(
    model: torch.nn.Module,
    test: TensorDataset,
    n_id: int = 2000,
    n_attack: int = 1000,
    n_other: int = 1000,
    seed: int = 0,
) -> Suite:
    """ID test images ``[0, n_id)``; attacks from the disjoint ``[n_id, n_id + n_attack)``."""
    x, y = test.tensors
    id_test = x[:n_id]
    attack_split = TensorDataset(x[n_id : n_id + n_attack], y[n_id : n_id + n_attack])
    shape = tuple(x.shape[1:])
    suite = Suite(id_test=id_test)
    for s in (font_letters(n_other, shape, seed=seed), photo_patches(n_other, shape, seed=seed)):
        suite.sets[s.name] = ("OOD", s.x)
    for attack, eps in ATTACK_GRID:
        s = make_adversarial(model, attack_split, attack, eps, seed=seed, cache_dir=CACHE)
        suite.sets[s.name] = ("AD", s.x)
        suite.info[s.name] = {k: s.info[k] for k in ("n_attacked", "n_success", "success_rate")}
    noise_sets = [
        gaussian_noise(n_other, shape, seed=seed),
        uniform_noise(n_other, shape, seed=seed),
        salt_and_pepper(n_other, shape, seed=seed),
        noisy_id(TensorDataset(x[-n_other:], y[-n_other:]), seed=seed),
    ]
    for s in noise_sets:
        suite.sets[s.name] = ("NS", s.x)
    return suite


def mnist_model_and_suite(root: str, seed: int = 0):
    train, test = mnist_dataset(root, train=True), mnist_dataset(root, train=False)
    model = trained_lenet(train, seed=seed)
    acc = accuracy(model, DataLoader(test, batch_size=1000))
    return train, test, model, acc, anomaly_suite(model, test, seed=seed)
