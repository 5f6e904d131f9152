"""In-distribution data that works offline.

:func:`digits_splits` turns scikit-learn's bundled 8x8 digits into four disjoint tensor
datasets: ``train`` (fit the classifier and the detectors), ``test`` (ID inputs that are
scored), ``attack`` (ID inputs that adversarial examples are crafted from, so that no
scored ID input is also the source of an adversarial one) and ``val`` (held-out ID inputs on
which thresholds are chosen, never fitted on and never reported). :func:`mnist_splits` does the
same for MNIST, read through torchvision from a data root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

#: parts of MNIST's test set that :func:`mnist_splits` draws from: ``"report"`` for the
#: reported evaluation, ``"validation"`` (disjoint from it) for tuning and ablations
PARTS: tuple[str, ...] = ("report", "validation")


@dataclass
class Splits:
    """Disjoint ID splits with images in [0, 1] of shape ``(N, C, H, W)``.

    :param train: fits the classifier and the detectors
    :param test: the ID inputs that are scored and reported
    :param attack: the ID inputs adversarials and ``noisy_id`` are made from
    :param num_classes: number of classes
    :param val: held-out ID inputs for thresholds (e.g. the detection rate at 5% FPR);
        ``None`` if there are none
    """

    train: TensorDataset
    test: TensorDataset
    attack: TensorDataset
    num_classes: int
    val: TensorDataset | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.tensors[0].shape[1:])


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
    from uniad_plugin.benchmark._common import ConfigError, one_line

    root = Path(root)
    if not root.is_dir() and not download:
        raise ConfigError(
            f"data root {str(root)!r} does not exist; pass --data-root DIR with MNIST/raw inside, "
            "or add --download"
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
            f"{root / 'MNIST' / 'raw'} with the IDX files, or add --download"
        ) from e
    perm = torch.randperm(len(x_te), generator=torch.Generator().manual_seed(seed))
    if part == "validation":
        perm = perm.flip(0)
    t_idx, a_idx, v_idx = perm[:total].split([n_test, n_attack, n_val])
    return Splits(
        train=TensorDataset(x_tr, y_tr),
        test=TensorDataset(x_te[t_idx], y_te[t_idx]),
        attack=TensorDataset(x_te[a_idx], y_te[a_idx]),
        num_classes=10,
        val=TensorDataset(x_te[v_idx], y_te[v_idx]),
    )
