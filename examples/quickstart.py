"""Quickstart: fit UniformDetector on a small CNN and tell digits from noise.

The classifier is a small CNN trained on scikit-learn's 8x8 digits (bundled, offline). The
detector is fitted on in-distribution (ID) training data only and scores ID test digits
against Gaussian noise images; the separation is reported as AUROC.

    python examples/quickstart.py          # well under a minute on one CPU core
    python examples/quickstart.py --fast   # shorter training (used by the tests)
"""

from __future__ import annotations

import argparse

import torch
from pytorch_ood.detector import UniformDetector  # provided by uniad-plugin, no import needed
from pytorch_ood.metrics import OODMetrics
from torch.utils.data import DataLoader

from uniad_plugin.anomalies import gaussian_noise
from uniad_plugin.data import digits_splits
from uniad_plugin.models import accuracy, digits_cnn, train_classifier


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="short training, for a quick look")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    args = parser.parse_args(argv)

    # 1. a pre-trained classifier (here: trained on the spot)
    splits = digits_splits(seed=args.seed)
    torch.manual_seed(args.seed)
    model = digits_cnn()
    shuffled = DataLoader(
        splits.train,
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    train_classifier(model, shuffled, epochs=10 if args.fast else 30, seed=args.seed)
    acc = accuracy(model, DataLoader(splits.test, batch_size=256))
    print(f"classifier accuracy on the ID test digits: {acc:.3f}")

    # 2. fit the detector on ID data only: a loader of (x, y) batches
    detector = UniformDetector(model, seed=args.seed)
    detector.fit(DataLoader(splits.train, batch_size=128))
    print(f"fitted {detector}")

    # 3. score ID test images and noise images (labelled -1, pytorch-ood's "unknown")
    x_id, y_id = splits.test.tensors
    noise = gaussian_noise(len(x_id), splits.input_shape, seed=args.seed)
    scores = torch.cat([detector(x_id), detector(noise.x)])  # larger = more anomalous
    labels = torch.cat([y_id, torch.full((len(noise),), -1)])
    auroc = OODMetrics().update(scores, labels).compute()["AUROC"]
    print(f"AUROC, ID digits vs Gaussian noise: {auroc:.3f}")


if __name__ == "__main__":
    main()
