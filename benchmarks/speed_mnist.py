"""Fit time and scoring cost of UniformDetector on MNIST, beside Mahalanobis and MultiMahalanobis.

Goals: fit on the 60,000 training images in under 60 s on 2 CPU cores; scoring under 1.25x the
model's plain forward pass. All detectors are measured in the same run, scoring rounds
interleaved, medians reported (the machine is noisy).

    python benchmarks/speed_mnist.py --data-root ../shared/data [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from pytorch_ood.detector import Mahalanobis, MultiMahalanobis
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_setup import HERE, trained_lenet  # noqa: E402

from uniad_plugin.data import mnist_dataset  # noqa: E402
from uniad_plugin.detectors.uniform import UniformDetector  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--out", default=str(HERE / "results" / "speed_mnist.md"))
    args = ap.parse_args(argv)

    train = mnist_dataset(args.data_root, train=True)
    test = mnist_dataset(args.data_root, train=False)
    model = trained_lenet(train)
    for p in model.parameters():
        p.requires_grad_(False)
    loader = DataLoader(train, batch_size=args.batch_size)
    encoder = model[:11]  # penultimate features (input of the last Linear)
    blocks = [model[:2], model[2:5], model[5:6]]

    uni, t_uni = timed(lambda: UniformDetector(model, seed=0).fit(loader))
    maha, t_maha = timed(lambda: Mahalanobis(encoder).fit(loader))
    mmaha, t_mmaha = timed(lambda: MultiMahalanobis(blocks).fit(loader))

    x_test = test.tensors[0]
    batches = list(x_test.split(args.batch_size))
    scorers = {
        "forward pass (model only)": model,
        "UniformDetector": uni.predict,
        "Mahalanobis": maha.predict,
        "MultiMahalanobis": mmaha.predict,
    }
    times: dict[str, list[float]] = {k: [] for k in scorers}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, fn in scorers.items():
                _, t = timed(lambda fn=fn: [fn(b) for b in batches])
                times[name].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["forward pass (model only)"]
    n = len(x_test)
    cmd = "python benchmarks/speed_mnist.py " + " ".join(argv or sys.argv[1:])
    lines = [
        "# Speed on MNIST (LeNet, CPU)",
        "",
        f"Produced by `{cmd.strip()}` with {torch.get_num_threads()} torch threads.",
        f"Fit: 60,000 training images, batch size {args.batch_size}, including the forward",
        f"passes. Scoring: {n:,} test images, median of {args.rounds} interleaved rounds.",
        "",
        "| detector | fit s | scoring s | images/s | x forward pass |",
        "|---|---|---|---|---|",
    ]
    fits = {"UniformDetector": t_uni, "Mahalanobis": t_maha, "MultiMahalanobis": t_mmaha}
    for name, t in med.items():
        fit = f"{fits[name]:.1f}" if name in fits else ""
        lines.append(f"| {name} | {fit} | {t:.3f} | {n / t:,.0f} | {t / base:.2f} |")
    lines += [
        "",
        f"UniformDetector layers: {uni.layers}. Goals: fit < 60 s, scoring < 1.25x forward.",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
