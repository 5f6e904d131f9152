"""Fit time and scoring cost of UniformDetector, beside Mahalanobis and MultiMahalanobis.

For the reference networks of the benchmark: on MNIST the LeNet and the ResNet (BatchNorm,
residual blocks), trained here as ``uniad --dataset mnist [--arch uniad_plugin.models:resnet_mnist
--train]`` trains them; on CIFAR-10 the committed ResNet-20 and VGG
(``benchmarks/weights/``), fitted on the 50,000 training images of an extracted
``ImageFolder`` tree. Goals: fit on the 60,000 MNIST training images in under 60 s on 2 CPU
cores (LeNet); scoring under 1.25x the model's plain forward pass. All detectors are measured
in the same run, scoring rounds interleaved, medians reported (the machine is noisy). The
built-ins are wired as the benchmark wires them (:func:`~uniad_plugin.benchmark.build_detectors`).
Besides the defaults: the same detector with fewer rivals (1, 0).

    python benchmarks/speed.py --data-root ../shared/data [--arch resnet] [--rounds 5]
        [--device cuda]
    python benchmarks/speed.py --arch resnet20 --train-dir /tmp/cifar10/train \
        --test-dir /tmp/cifar10/test            # or --arch vgg
    python benchmarks/speed.py --fast --out /tmp/speed.md   # a smoke run, seconds

``--fast`` needs no data: it runs on a tiny stand-in written in MNIST's own file format
(:func:`mnist_setup.write_fast_mnist`, scikit-learn's digits on 28x28), one epoch, one scoring
round, the model cached in a temporary folder; its numbers check that the script works, nothing more.

On a GPU (``--device cuda``) the model, the detectors and the test batches live on the device,
and every timed scoring round ends with a synchronisation; the fits read the training batches
from the CPU, as a user's loader gives them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_setup import CACHE, HERE, write_fast_mnist  # noqa: E402

from uniad_plugin.benchmark import build_detectors, load_model, trained_model  # noqa: E402
from uniad_plugin.data import image_folder, mnist_dataset  # noqa: E402
from uniad_plugin.detectors.uniform import UniformDetector  # noqa: E402
from uniad_plugin.models import lenet, resnet20_cifar, resnet_mnist, vgg_cifar  # noqa: E402

#: MNIST networks, trained here (cached)
ARCHS = {"lenet": lenet, "resnet": resnet_mnist}
#: CIFAR-10 networks: the committed reference weights of benchmarks/train_cifar_reference.py
CIFAR_ARCHS = {"resnet20": (resnet20_cifar, "resnet20.pt"), "vgg": (vgg_cifar, "vgg.pt")}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--arch", choices=sorted(ARCHS) + sorted(CIFAR_ARCHS), default="lenet")
    ap.add_argument("--train-dir", help="CIFAR-10 training images, ImageFolder layout")
    ap.add_argument("--test-dir", help="CIFAR-10 test images, ImageFolder layout")
    ap.add_argument("--cache-dir", default=str(CACHE), help="cache of the trained model")
    ap.add_argument("--device", default="cpu", help="device of the model and the detectors")
    ap.add_argument("--out", default=None)
    ap.add_argument("--epochs", type=int, default=3, help="training epochs of the model")
    ap.add_argument(
        "--fast",
        action="store_true",
        help="smoke run: tiny stand-in data (no --data-root), 1 round, temporary cache",
    )
    args = ap.parse_args(argv)
    if args.fast:
        work = Path(tempfile.mkdtemp(prefix="uniad-speed-fast-"))
        args.data_root = str(write_fast_mnist(work / "data"))
        args.cache_dir = str(work / "cache")
        args.rounds = 1
        args.epochs = 1
        args.out = args.out or str(work / "speed.md")
    device = torch.device(args.device)
    cifar = args.arch in CIFAR_ARCHS
    data_name = "cifar10" if cifar else "mnist"
    suffix = ("" if args.arch == "lenet" else f"_{args.arch}") + (
        "" if device.type == "cpu" else f"_{device.type}"
    )
    out = args.out or str(HERE / "results" / f"speed_{data_name}{suffix}.md")

    if cifar:
        if not (args.train_dir and args.test_dir):
            ap.error(f"--arch {args.arch} needs --train-dir and --test-dir (CIFAR-10 images)")
        factory, weights = CIFAR_ARCHS[args.arch]
        train, classes = image_folder(args.train_dir)
        test, _ = image_folder(args.test_dir)
        model = load_model(HERE / "weights" / weights, factory, len(classes))
    else:
        train = mnist_dataset(args.data_root, train=True)
        test = mnist_dataset(args.data_root, train=False)
        factory = ARCHS[args.arch]
        model, _ = trained_model(
            factory.__name__,
            factory,
            train,
            epochs=args.epochs,
            seed=0,
            batch_size=128,
            cache_dir=args.cache_dir,
        )
    model = model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    loader = DataLoader(train, batch_size=args.batch_size)
    entries = build_detectors(
        ["Mahalanobis", "MultiMahalanobis"], model, test.tensors[0][:8], device=device
    )
    builtins = {e.name: e.detector for e in entries if e.ok}  # MultiMahalanobis: Sequential only
    skipped = [f"{e.name} ({e.reason})" for e in entries if not e.ok]

    uni, t_uni = timed(lambda: UniformDetector(model, seed=0).fit(loader))
    fits = {"UniformDetector": t_uni}
    # what the rival contrasts cost: the same detector with fewer rivals (refitted, since the
    # held-out statistics belong to the rivals)
    fewer = {}
    for rivals in (1, 0):
        name = f"UniformDetector, rivals={rivals}"
        fewer[name], fits[name] = timed(
            lambda rivals=rivals: UniformDetector(model, seed=0, rivals=rivals).fit(loader)
        )
    for name, det in builtins.items():
        fits[name] = timed(lambda det=det: det.fit(loader))[1]

    x_test = test.tensors[0]
    batches = [b.to(device) for b in x_test.split(args.batch_size)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    scorers = {
        "forward pass (model only)": model,
        "UniformDetector": uni.predict,
        **{name: det.predict for name, det in fewer.items()},
        **{name: det.predict for name, det in builtins.items()},
    }
    times: dict[str, list[float]] = {k: [] for k in scorers}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, fn in scorers.items():
                _, t = timed(lambda fn=fn: ([fn(b) for b in batches], sync()))
                times[name].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["forward pass (model only)"]
    n = len(x_test)
    where = "CPU" if device.type == "cpu" else torch.cuda.get_device_name(device)
    cmd = "python benchmarks/speed.py " + " ".join(argv or sys.argv[1:])
    lines = [
        f"# Speed on {'CIFAR-10' if cifar else 'MNIST'} ({factory.__name__}, {where})",
        "",
        f"Produced by `{cmd.strip()}`"
        + (f" with {torch.get_num_threads()} torch threads." if device.type == "cpu" else "."),
        f"Fit: {len(train):,} training images, batch size {args.batch_size}, including the forward",
        f"passes. Scoring: {n:,} test images, median of {args.rounds} interleaved rounds.",
        "",
        "| detector | fit s | scoring s | images/s | x forward pass |",
        "|---|---|---|---|---|",
    ]
    for name, t in med.items():
        fit = f"{fits[name]:.1f}" if name in fits else ""
        lines.append(f"| {name} | {fit} | {t:.3f} | {n / t:,.0f} | {t / base:.2f} |")
    lines += [
        "",
        f"UniformDetector layers: {uni.layers_}, rivals {uni.rivals_} "
        "(the default; `rivals=0`: no rival contrasts). Goals: fit < 60 s (LeNet), "
        "scoring < 1.25x forward.",
    ]
    if skipped:
        lines.append(f"Skipped on this model: {'; '.join(skipped)}.")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
