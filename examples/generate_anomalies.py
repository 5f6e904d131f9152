"""Generate the three classes of anomalous inputs for a classifier: OOD, adversarial, noise.

Every set is a ``uniad_plugin.anomalies.AnomalySet``: a float tensor ``x`` of shape
``(N, C, H, W)`` whose samples are labelled ``-1`` (pytorch-ood's "unknown"), with ``kind``
(``"OOD"``, ``"AD"`` or ``"NS"``), ``name`` and JSON-serialisable ``info``. Every function
takes a seed: the same call gives the same images, and a value grid ``levels``: the sets here
use the digits' own grid (values k/16), so counting off-grid pixels cannot tell them from ID
images; adversarials are re-checked after rounding onto it.

    python examples/generate_anomalies.py                        # digits, under a minute
    python examples/generate_anomalies.py --fast --plot grid.png # smaller sets, a picture
    python examples/generate_anomalies.py --data-root DIR        # + Fashion-MNIST from DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from uniad_plugin.anomalies import (
    AdversarialSet,
    AnomalySet,
    font_letters,
    gaussian_noise,
    load_ood,
    make_adversarial,
    noisy_id,
    photo_patches,
    salt_and_pepper,
    uniform_noise,
)
from uniad_plugin.data import digits_splits
from uniad_plugin.models import digits_cnn, train_classifier


def describe(a: AnomalySet) -> str:
    """One line per set: adversarial sets also report how often the attack succeeded."""
    line = f"{a.kind:>3}  {a.name:<14} {len(a):>5} images  values in [{a.x.min():.2f}, {a.x.max():.2f}]"
    if isinstance(a, AdversarialSet):
        l2 = a.info["mean_l2"]
        line += f"  success rate {a.info['success_rate_continuous']:.2f} -> {a.success_rate:.2f}"
        line += " after rounding"
        line += f", mean L2 perturbation {l2:.2f}" if l2 is not None else ""
    return line


def plot(sets: list[AnomalySet], path: Path, per_set: int = 6) -> None:
    """A grid with the first images of every set, one row per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(sets), per_set, figsize=(per_set * 1.1, len(sets) * 1.2))
    for row, a in zip(axes, sets):
        for i, ax in enumerate(row):
            ax.axis("off")
            if i < len(a):
                ax.imshow(a.x[i].permute(1, 2, 0).squeeze(-1), cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"{a.kind}: {a.name}", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="small sets and short training")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--plot", metavar="PNG", type=Path, help="save a grid of examples")
    parser.add_argument("--cache-dir", metavar="DIR", help="cache adversarial sets on disk")
    parser.add_argument("--data-root", metavar="DIR", help="also load Fashion-MNIST from DIR")
    args = parser.parse_args(argv)
    seed, n = args.seed, 60 if args.fast else 450

    # the classifier the adversarial examples are crafted against
    splits = digits_splits(seed=seed)
    shape = splits.input_shape
    levels = 16  # the digits' value grid (images / 16); 255 for 8-bit images such as MNIST
    torch.manual_seed(seed)
    model = digits_cnn()
    shuffled = DataLoader(
        splits.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    train_classifier(model, shuffled, epochs=10 if args.fast else 30, seed=seed)

    # OOD: natural images from another distribution (offline: fonts and photos that ship with
    # matplotlib and scikit-learn; real data sets through torchvision with load_ood).
    # split="validation" draws from other fonts / photos, for tuning detector defaults
    grid = {"seed": seed, "levels": levels}
    sets: list[AnomalySet] = [font_letters(n, shape, **grid), photo_patches(n, shape, **grid)]
    if args.data_root:
        sets.append(load_ood("fashion_mnist", args.data_root, shape, n=n, **grid))

    # AD: foolbox attacks on the correctly classified inputs of the attack split (disjoint from
    # the test split); only adversarials within the budget eps that still fool the model after
    # rounding onto the grid are kept. The *_obj attacks change only the digit's own pixels
    attack = dict(seed=seed, progress=False, cache_dir=args.cache_dir, levels=levels)
    attack["max_samples"] = 40 if args.fast else None
    sets += [
        make_adversarial(model, splits.attack, "fgsm", 0.1, **attack),  # L-inf budget
        make_adversarial(model, splits.attack, "pgd_linf", 0.1, **attack),  # L-inf budget
        make_adversarial(model, splits.attack, "pgd_l2", 1.0, **attack),  # L2 budget
        make_adversarial(model, splits.attack, "deepfool", 1.0, **attack),  # L2 budget
        make_adversarial(model, splits.attack, "pgd_linf_obj", 0.3, **attack),  # L-inf budget
    ]

    # NS: inputs generated from meaningless data
    sets += [
        gaussian_noise(n, shape, **grid),
        uniform_noise(n, shape, **grid),
        salt_and_pepper(n, shape, **grid),
        noisy_id(splits.attack, sigma=0.5, max_samples=n, **grid),
    ]

    for a in sets:
        print(describe(a))
    x, y = sets[0][0]
    print(f"a sample is (x, y) with x of shape {tuple(x.shape)} and y = {y}")
    if args.plot:
        plot(sets, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
