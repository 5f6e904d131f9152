"""UniformDetector against pytorch-ood's built-in detectors on OOD, adversarial and noise inputs.

Builds the evaluation from the library's parts, as the ``uniad`` command does, so that each
part can be swapped for your own: a classifier (a small CNN on scikit-learn's digits), anomaly
sets of the three classes (``uniad_plugin.anomalies``), detectors wired to the classifier by
name (``uniad_plugin.benchmark.build_detectors``) and one
``uniad_plugin.benchmark.UnifiedBenchmark`` that fits and scores them all on the same data.

    python examples/compare_builtin.py          # well under a minute on one CPU core
    python examples/compare_builtin.py --fast   # smaller sets, shorter training (for tests)
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader

from uniad_plugin.anomalies import (
    font_letters,
    gaussian_noise,
    make_adversarial,
    photo_patches,
    salt_and_pepper,
)
from uniad_plugin.benchmark import UnifiedBenchmark, build_detectors, results_to_table
from uniad_plugin.data import digits_splits
from uniad_plugin.models import digits_cnn, train_classifier

DETECTORS = ["UniformDetector", "MaxSoftmax", "EnergyBased", "Mahalanobis", "KNN", "ViM"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="small sets and short training")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument(
        "--metric",
        default="AUROC",
        choices=("AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR"),
        help="metric of the printed table",
    )
    args = parser.parse_args(argv)
    seed = args.seed
    n = 100 if args.fast else 450  # images per OOD / noise set
    n_attack = 50 if args.fast else None  # attacked sources per attack (None: whole split)

    # the classifier
    splits = digits_splits(seed=seed)
    shape = splits.input_shape
    torch.manual_seed(seed)
    model = digits_cnn()
    shuffled = DataLoader(
        splits.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    train_classifier(model, shuffled, epochs=10 if args.fast else 30, seed=seed)

    # anomaly sets: OOD (natural, other distribution), AD (adversarial), NS (noise)
    attack = dict(seed=seed, progress=False, max_samples=n_attack)
    anomalies = [
        font_letters(n, shape, seed=seed),
        photo_patches(n, shape, seed=seed),
        make_adversarial(model, splits.attack, "fgsm", 0.2, **attack),
        make_adversarial(model, splits.attack, "pgd_linf", 0.2, **attack),
        make_adversarial(model, splits.attack, "deepfool", 1.0, **attack),
        gaussian_noise(n, shape, seed=seed),
        salt_and_pepper(n, shape, seed=seed),
    ]
    for a in anomalies:
        print(f"{a.kind:>3}  {a.name:<14} {len(a):>4} images")

    # detectors by name, wired to the classifier (logits, penultimate features, ...)
    entries = build_detectors(
        DETECTORS,
        model,
        splits.test.tensors[0][:8],
        seed=seed,
    )
    bench = UnifiedBenchmark(splits.train, splits.test, anomalies, progress=False)
    bench.fit(entries)  # every detector on the same ID training data
    rows = bench.evaluate(entries)  # ID test set vs each set, class means, overall mean
    print()
    print(results_to_table(rows, args.metric), end="")


if __name__ == "__main__":
    main()
