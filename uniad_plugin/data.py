"""In-distribution data that works offline.

:func:`digits_splits` turns scikit-learn's bundled 8x8 digits into three disjoint tensor
datasets: ``train`` (fit the classifier and the detectors), ``test`` (ID inputs that are
scored) and ``attack`` (ID inputs that adversarial examples are crafted from, so that no
scored ID input is also the source of an adversarial one).
"""

from __future__ import annotations

from dataclasses import dataclass

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
