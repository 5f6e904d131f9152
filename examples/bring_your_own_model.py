"""Bring your own model: UniformDetector on a custom nn.Module, with layers chosen by name.

Any classifier that maps a batch of inputs to logits works. Layers are named as in
``model.named_modules()``: ``"name"`` taps a module's output, ``"name:input"`` its input (e.g.
the penultimate features that enter the head) and ``"logits"`` the model's output. Every tapped
layer is collected in ONE forward pass by forward hooks; feature maps are average-pooled.

    python examples/bring_your_own_model.py          # well under a minute on one CPU core
    python examples/bring_your_own_model.py --fast   # shorter training (used by the tests)
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from pytorch_ood.detector import UniformDetector
from pytorch_ood.metrics import OODMetrics
from torch import Tensor, nn
from torch.utils.data import DataLoader

from uniad_plugin.anomalies import font_letters, uniform_noise
from uniad_plugin.data import digits_splits
from uniad_plugin.models import accuracy, train_classifier
from uniad_plugin.nn.taps import LayerTaps, default_layers


class MyNet(nn.Module):
    """A user's classifier: named blocks, a functional ReLU in forward, a linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.embed = nn.Linear(32 * 4 * 4, 64)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.block(self.stem(x)).flatten(1)
        return self.head(F.relu(self.embed(h)))


def auroc(id_scores: Tensor, anomaly_scores: Tensor) -> float:
    scores = torch.cat([id_scores, anomaly_scores])
    labels = torch.cat([torch.zeros(len(id_scores)), -torch.ones(len(anomaly_scores))]).long()
    return OODMetrics().update(scores, labels).compute()["AUROC"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="short training, for a quick look")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    args = parser.parse_args(argv)

    splits = digits_splits(seed=args.seed)
    torch.manual_seed(args.seed)
    model = MyNet()
    shuffled = DataLoader(
        splits.train,
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    train_classifier(model, shuffled, epochs=10 if args.fast else 30, seed=args.seed)
    x_id = splits.test.tensors[0]
    print(
        f"accuracy of MyNet on the ID test digits: {accuracy(model, DataLoader(splits.test)):.3f}"
    )

    # the layers the detector would pick by itself, from one probe forward pass
    print("default layers:", default_layers(model, x_id[:2]))

    # our own choice: the first convolution (before its BatchNorm), the ReLU of the second block
    # (dotted names reach inside nn.Sequential), the input of the head (the penultimate
    # features, after the functional ReLU) and the logits
    layers = ["stem.0", "block.1", "head:input", "logits"]
    logits, feats = LayerTaps(model, layers)(x_id[:2])  # what the detector will see
    for name, f in zip(layers, feats):
        print(f"  {name:<11} -> {tuple(f.shape[1:])} features per input")

    detector = UniformDetector(model, layers=layers, seed=args.seed)
    detector.fit(DataLoader(splits.train, batch_size=128))

    letters = font_letters(300, splits.input_shape, seed=args.seed)  # OOD
    noise = uniform_noise(300, splits.input_shape, seed=args.seed)  # NS
    for name, anomalies in [("letters (OOD)", letters), ("uniform noise (NS)", noise)]:
        fused = auroc(detector(x_id), detector(anomalies.x))
        # per-layer scores (and rival contrasts) show what each contributes
        per_layer = [
            auroc(a, b)
            for a, b in zip(detector.layer_scores(x_id).T, detector.layer_scores(anomalies.x).T)
        ]
        parts = ", ".join(f"{n} {v:.3f}" for n, v in zip(detector.score_names, per_layer))
        print(f"AUROC vs {name}: {fused:.3f} (per layer: {parts})")


if __name__ == "__main__":
    main()
