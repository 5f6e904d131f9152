"""pytorch-ood in Python: UniformDetector beside pytorch-ood's built-ins on your own images.

What most users do: a pre-trained classifier, an ``ImageFolder`` of in-distribution images,
a folder of images the model should reject. Fit the detectors, compare them with
``OODMetrics``, save the fitted detector, and choose a threshold at 5% false positives on
held-out ID images for deployment.

    python examples/pytorch_ood_in_python.py --train-dir DIR --test-dir DIR --ood-dir DIR \\
        --weights resnet20.pt [--out DIR]

``--weights``: a ``state_dict`` of :func:`uniad_plugin.models.resnet20_cifar` with one output
per class folder (e.g. ``benchmarks/weights/resnet20.pt`` for CIFAR-10). On a machine with a
GPU everything runs there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from pytorch_ood.detector import EnergyBased, Mahalanobis, UniformDetector
from pytorch_ood.metrics import OODMetrics
from pytorch_ood.utils import ToUnknown
from torch.utils.data import ConcatDataset, DataLoader, Subset
from torchvision.datasets import ImageFolder
from torchvision.transforms import CenterCrop, Compose, Resize, ToTensor

from uniad_plugin.models import resnet20_cifar


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-dir", type=Path, required=True, help="ID training images")
    parser.add_argument("--test-dir", type=Path, required=True, help="ID test images")
    parser.add_argument("--ood-dir", type=Path, required=True, help="images to reject")
    parser.add_argument("--weights", type=Path, required=True, help="the classifier's weights")
    parser.add_argument("--out", type=Path, default=Path("uniad-python"), help="output folder")
    parser.add_argument(
        "--fast", action="store_true", help="no effect here (every example takes it)"
    )
    args = parser.parse_args(argv)

    # --8<-- [start:data]
    device = "cuda" if torch.cuda.is_available() else "cpu"

    # --- data: class folders, labels = sorted folder names; images in [0, 1], 32 x 32 -------
    transform = Compose([Resize(32), CenterCrop(32), ToTensor()])
    train = ImageFolder(args.train_dir, transform=transform)
    test = ImageFolder(args.test_dir, transform=transform)
    # OOD images in one or more subfolders (ood/<any name>/*.png); every one gets the label -1
    ood = ImageFolder(args.ood_dir, transform=transform, target_transform=ToUnknown())
    # half of the ID test images choose the threshold, the other half report it
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    calibration, report = Subset(test, order[::2].tolist()), Subset(test, order[1::2].tolist())
    train_loader = DataLoader(train, batch_size=256, shuffle=True, num_workers=2)

    # --8<-- [end:data]
    # --8<-- [start:detectors]
    # --- the pre-trained classifier, in eval mode, on the device ----------------------------
    model = resnet20_cifar(num_classes=len(train.classes))
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model = model.to(device).eval()

    # --- detectors: ours, and two built-ins made the pytorch-ood way ------------------------
    detectors = {
        "UniformDetector": UniformDetector(model),
        "EnergyBased": EnergyBased(model),
        "Mahalanobis": Mahalanobis(model.features),
    }
    for name, detector in detectors.items():
        if detector.requires_fit:
            detector.fit(train_loader)
        print(f"fitted {name}")

    # --8<-- [end:detectors]
    # --8<-- [start:compare]
    # --- compare them with OODMetrics: ID test images against the OOD images -----------------
    eval_loader = DataLoader(ConcatDataset([report, ood]), batch_size=256, num_workers=2)
    print(f"\n{'detector':<16} {'AUROC':>6} {'FPR95TPR':>9}")
    for name, detector in detectors.items():
        metrics = OODMetrics()
        with torch.no_grad():
            for x, y in eval_loader:
                metrics.update(detector(x.to(device)), y)
        r = metrics.compute()
        print(f"{name:<16} {r['AUROC']:>6.3f} {r['FPR95TPR']:>9.3f}")

    # --8<-- [end:compare]
    # --8<-- [start:deploy]
    # --- save the fitted detector, load it back (weights_only: no code from the file) -------
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "uniform_detector.pt"
    torch.save(detectors["UniformDetector"].state_dict(), path)
    detector = UniformDetector(model).load_state_dict(torch.load(path, weights_only=True))

    # --- a threshold that flags 5% of held-out ID images, for deployment --------------------
    def scores(data) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([detector(x.to(device)).cpu() for x, _ in DataLoader(data, 256)])

    threshold = torch.quantile(scores(calibration), 0.95).item()
    false_alarms = (scores(report) > threshold).float().mean().item()
    caught = (scores(ood) > threshold).float().mean().item()
    print(f"\nthreshold {threshold:.3f} (5% of the calibration ID images above it)")
    print(
        f"flagged: {false_alarms:.1%} of the other ID test images, {caught:.1%} of the OOD images"
    )
    print(f"saved {path}")

    # --8<-- [end:deploy]


if __name__ == "__main__":
    main()
