"""In-distribution data that works offline.

:func:`digits_splits` turns scikit-learn's bundled 8x8 digits into three disjoint tensor
datasets: ``train`` (fit the classifier and the detectors), ``test`` (ID inputs that are
scored) and ``attack`` (ID inputs that adversarial examples are crafted from, so that no
scored ID input is also the source of an adversarial one). :func:`mnist_splits` does the same
for MNIST, read through torchvision from a data root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset


@dataclass
class Splits:
    """Three disjoint ID splits with images in [0, 1] of shape ``(N, C, H, W)``."""

    train: TensorDataset
    test: TensorDataset
    attack: TensorDataset
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.tensors[0].shape[1:])


def digits_splits(
    seed: int = 0, test_fraction: float = 0.25, attack_fraction: float = 0.15
) -> Splits:
    """scikit-learn's digits (1,797 images, 1x8x8, values scaled to [0, 1]) in three splits.

    :param seed: seed of the random permutation that assigns samples to splits
    :raises ValueError: if the fractions leave no training data
    """
    if not (0 < test_fraction and 0 < attack_fraction and test_fraction + attack_fraction < 1):
        raise ValueError(
            "expected 0 < test_fraction, 0 < attack_fraction and their sum < 1, got "
            f"{test_fraction} and {attack_fraction}"
        )
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(x)))
    n_attack = int(round(attack_fraction * len(x)))
    test_idx, attack_idx, train_idx = (
        perm[:n_test],
        perm[n_test : n_test + n_attack],
        perm[n_test + n_attack :],
    )
    return Splits(
        train=TensorDataset(x[train_idx], y[train_idx]),
        test=TensorDataset(x[test_idx], y[test_idx]),
        attack=TensorDataset(x[attack_idx], y[attack_idx]),
        num_classes=10,
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
    download: bool = False,
) -> Splits:
    """MNIST through torchvision as :class:`~uniad_plugin.data.Splits` (images 1x28x28 in [0, 1]).

    ``train`` is the 60,000 training images; ``test`` and ``attack`` are disjoint random
    subsets (``n_test`` and ``n_attack`` images, drawn with ``seed``) of the 10,000 test images.

    :raises ConfigError: if ``root`` does not exist or holds no MNIST (and ``download`` is off)
    """
    from uniad_plugin.benchmark._common import ConfigError, one_line

    root = Path(root)
    if not root.is_dir() and not download:
        raise ConfigError(
            f"data root {str(root)!r} does not exist; pass --data-root DIR with MNIST/raw inside, "
            "or add --download"
        )
    if n_test < 1 or n_attack < 1 or n_test + n_attack > 10000:
        raise ConfigError(
            f"expected n_test >= 1, n_attack >= 1 and n_test + n_attack <= 10000 (MNIST's test "
            f"set), got {n_test} and {n_attack}"
        )
    try:
        x_tr, y_tr = mnist_dataset(root, train=True, download=download).tensors
        x_te, y_te = mnist_dataset(root, train=False, download=download).tensors
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"MNIST not found under {str(root)!r} ({one_line(e)}); expected "
            f"{root / 'MNIST' / 'raw'} with the IDX files, or add --download"
        ) from e
    perm = torch.randperm(len(x_te), generator=torch.Generator().manual_seed(seed))
    t_idx, a_idx = perm[:n_test], perm[n_test : n_test + n_attack]
    return Splits(
        train=TensorDataset(x_tr, y_tr),
        test=TensorDataset(x_te[t_idx], y_te[t_idx]),
        attack=TensorDataset(x_te[a_idx], y_te[a_idx]),
        num_classes=10,
    )
