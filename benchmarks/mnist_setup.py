"""Shared real-MNIST setup for the scripts in ``benchmarks/``: a cached LeNet, AUROC, and the
tiny stand-in data of their ``--fast`` modes.

Not a test: the full runs need the MNIST IDX files (``torchvision.datasets.MNIST(root,
download=False)``); ``--fast`` writes :func:`write_fast_mnist` instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from pytorch_ood.metrics import OODMetrics
from torch.utils.data import TensorDataset

from uniad_plugin.benchmark import trained_model
from uniad_plugin.models import lenet

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"

#: training images of the ``--fast`` stand-in (the other digits are its test images)
FAST_TRAIN = 1200


def trained_lenet(
    train: TensorDataset,
    epochs: int = 3,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = CACHE,
) -> torch.nn.Module:
    """LeNet trained on MNIST as the ``uniad`` command trains it (the package's
    :func:`~uniad_plugin.benchmark.trained_model`), cached in ``cache_dir``
    (``benchmarks/.cache`` by default)."""
    model, _ = trained_model(
        "lenet", lenet, train, epochs=epochs, seed=seed, batch_size=128, cache_dir=cache_dir
    )
    return model


def auroc(s_id: torch.Tensor, s_ood: torch.Tensor) -> float:
    """AUROC of ID scores against anomaly scores (pytorch-ood's OODMetrics)."""
    m = OODMetrics()
    labels = torch.cat([torch.zeros(len(s_id)), -torch.ones(len(s_ood))]).long()
    m.update(torch.cat([s_id, s_ood]), labels)
    return float(m.compute()["AUROC"])


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (the format of MNIST's raw files)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fast_mnist(root: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """A tiny stand-in for MNIST in torchvision's raw layout (``root/MNIST/raw/*-ubyte``), read
    by :func:`uniad_plugin.data.mnist_dataset` like the real files: scikit-learn's 1,797
    digits, each 8x8 pixel a 3x3 block in a 28x28 image with a 2-pixel black border, values
    ``round(k * 255 / 16)``; :data:`FAST_TRAIN` of them (a seeded permutation) are the
    training images, the other 597 the test images. Nothing is downloaded.

    :param root: the folder to write into (``None``: a new temporary folder)
    :return: ``root`` (the ``--data-root`` of the scripts)
    """
    from sklearn.datasets import load_digits

    root = Path(tempfile.mkdtemp(prefix="uniad-fast-mnist-") if root is None else root)
    bunch = load_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)
    images = np.kron(images, np.ones((3, 3), np.uint8))  # (N, 24, 24)
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    order = np.random.default_rng(seed).permutation(len(images))
    train, test = order[:FAST_TRAIN], order[FAST_TRAIN:]
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, idx in (("train", train), ("t10k", test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[idx])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", bunch.target[idx])
    return root
