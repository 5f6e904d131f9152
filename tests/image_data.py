"""Tiny image data sets on disk for the tests: CIFAR-10 in torchvision's own format and an
``ImageFolder`` tree of PNGs. Images of class ``k`` are a flat colour of the class plus seeded
noise, so a classifier separates them after a few steps."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

#: one RGB colour per class (ten classes)
_COLOURS = np.array(
    [[r, g, b] for r in (40, 215) for g in (40, 215) for b in (40, 215)]
    + [[128] * 3, [128, 40, 215]],
    np.int16,
)


def class_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 images ``(N, size, size, 3)``: the colour of each label plus noise."""
    base = _COLOURS[labels % len(_COLOURS)][:, None, None, :]
    noise = rng.integers(-20, 21, size=(len(labels), size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_tiny_cifar10(root: Path, n_per_batch: int = 40, n_test: int = 300, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` as torchvision writes it (pickled dicts with ``data``, uint8
    ``(N, 3072)`` in CHW order, and ``labels``; ``batches.meta`` with ``label_names``), with
    all ten labels in turn; returns ``root``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_per_batch
        labels = np.arange(n) % 10
        data = class_images(labels, 32, rng).transpose(0, 3, 1, 2).reshape(n, 3072)
        entry = {"batch_label": name, "data": data, "labels": labels.tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"]}  # fmt: skip
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return root


def write_image_folder(
    root: Path, classes: tuple[str, ...] = ("cat", "dog"), n_per_class: int = 6, seed: int = 0
) -> Path:
    """``root/<class>/<i>.png``: ``n_per_class`` RGB PNGs of 40x48 pixels per class (not square,
    so that resizing and cropping are exercised); returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        images = class_images(np.full(n_per_class, k), 48, rng)[:, :40]
        for i, img in enumerate(images):
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root
