"""Small reference classifiers and a plain training loop.

These are the models the ``uniad`` command, the examples and the tests use when the user
does not bring their own: a small CNN for scikit-learn's 8x8 digits, a LeNet-sized CNN
for 28x28 MNIST-like images (both ``nn.Sequential``, so that every layer has a name) and small
ResNets for 28x28 and 3x32x32 images, torchvision's ResNet-18 for ImageNet-scale images; and :class:`Normalized`, which puts a model trained on
normalised inputs behind its normalisation so that it takes images in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from uniad_plugin._utils import first_output


def digits_cnn(num_classes: int = 10) -> nn.Sequential:
    """CNN for 1x8x8 inputs in [0, 1] (scikit-learn's digits)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def lenet(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """LeNet-5 (ReLU, max-pooling) for 28x28 inputs in [0, 1] (MNIST, Fashion-MNIST, KMNIST).

    Layers 0-11: conv 6@5x5 (padding 2), ReLU, pool, conv 16@5x5, ReLU, pool, flatten,
    linear 400->120, ReLU, linear 120->84, ReLU, linear 84->classes.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def train_classifier(
    model: nn.Module,
    loader: DataLoader,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Train ``model`` with cross-entropy and Adam; returns the model in eval mode.

    :param seed: seeds the global torch generator for the duration of training (the
        loader's shuffling uses it unless the loader has its own generator)
    """
    device = torch.device(device)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        epoch_iter = range(epochs)
        if progress:
            from tqdm.auto import tqdm

            epoch_iter = tqdm(epoch_iter, desc="training classifier", unit="epoch")
        for _ in epoch_iter:
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of ``model`` on ``loader``."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        pred = first_output(model(x.to(device))).argmax(1).cpu()
        correct += (pred == y).sum().item()
        total += y.numel()
    return correct / max(total, 1)


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a skip connection (He et al., 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small ResNet (BatchNorm, residual blocks, a custom ``forward``) for small images.

    Stem: conv 3x3 with ``widths[0]`` channels, BatchNorm, ReLU; then ``blocks``
    :class:`_BasicBlock` s per stage (``layer1``, ``layer2``, ``layer3``; stride 2 from the second
    stage on: 28x28, 14x14, 7x7 for MNIST), global average pooling and a linear head ``fc``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        widths: tuple[int, ...] = (16, 32, 64),
        blocks: int = 1,
    ) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"expected blocks >= 1 per stage, got {blocks}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        c_in = widths[0]
        for i, width in enumerate(widths):
            stage: nn.Module = _BasicBlock(c_in, width, 1 if i == 0 else 2)
            if blocks > 1:
                stage = nn.Sequential(
                    stage, *(_BasicBlock(width, width, 1) for _ in range(blocks - 1))
                )
            setattr(self, f"layer{i + 1}", stage)
            c_in = width
        self.num_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features ``(B, widths[-1])``: what the head ``fc`` reads (the
        encoder that pytorch-ood's feature-based detectors such as ``Mahalanobis`` take)."""
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def resnet_mnist(num_classes: int = 10, in_channels: int = 1) -> SmallResNet:
    """The second reference architecture for 28x28 images: :class:`SmallResNet` with stages of
    16, 32 and 64 channels (about 78k parameters)."""
    return SmallResNet(num_classes, in_channels, (16, 32, 64))


def resnet_cifar(num_classes: int = 10, in_channels: int = 3) -> SmallResNet:
    """The reference architecture for 3x32x32 images (CIFAR-10, ``--dataset folder``):
    :class:`SmallResNet` with stages of 16, 32 and 64 channels on RGB inputs (32x32, 16x16,
    8x8; about 78k parameters). Inputs in [0, 1], no normalisation."""
    return SmallResNet(num_classes, in_channels, (16, 32, 64))


def resnet20_cifar(num_classes: int = 10, in_channels: int = 3) -> SmallResNet:
    """The ResNet-20 layout for 3x32x32 images (He et al., 2016, section 4.2), with 1x1
    projection shortcuts where the shape changes (the paper's CIFAR networks pad with zeros
    instead): :class:`SmallResNet` with three stages of three residual blocks (16, 32 and 64
    channels; 272,474 parameters),
    global average pooling and a linear head. Inputs in [0, 1], no normalisation. The
    reference ResNet of the CIFAR-10 evaluation (``benchmarks/train_cifar_reference.py``)."""
    return SmallResNet(num_classes, in_channels, (16, 32, 64), blocks=3)


def vgg_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Sequential:
    """A VGG-style network without residual connections for 3x32x32 images: three stages of two
    3x3 convolutions with BatchNorm and ReLU (32, 64 and 128 channels), max-pooling after each
    stage, global average pooling and a linear head (about 288k parameters). An
    ``nn.Sequential``, so every layer has a name (``"2"``, ``"5"``, ... the ReLUs). Inputs in
    [0, 1], no normalisation. The second reference network of the CIFAR-10 evaluation."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for width in (32, 64, 128):
        for _ in range(2):
            layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
            layers.append(nn.ReLU())
            c_in = width
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


def imagenet_resnet18(num_classes: int = 1000) -> nn.Module:
    """torchvision's ResNet-18 (``weights=None``, no download) with ``num_classes`` outputs: the
    reference architecture of the ImageNet-scale data sets (3x224x224). Train it on images in
    [0, 1], or wrap a model trained on normalised inputs in :class:`Normalized`."""
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=num_classes)


class Normalized(nn.Module):
    """``model`` behind a per-channel normalisation ``(x - mean) / std``.

    The benchmark's attacks, noise and OOD sets live in [0, 1] image space, so a model that was
    trained on normalised inputs has to carry its normalisation; wrap it in this module (e.g.
    ``Normalized(torchvision.models.resnet18(num_classes=10), (0.49, 0.48, 0.45),
    (0.25, 0.24, 0.26))``). ``mean`` and ``std`` are non-persistent buffers: they come from the
    code that builds the wrapper, and the ``state_dict`` holds only ``model.*`` entries.

    :param model: the classifier that expects normalised inputs
    :param mean: per-channel means (a sequence of length C)
    :param std: per-channel standard deviations, all > 0
    :raises ValueError: if ``mean`` and ``std`` differ in length or a ``std`` is not > 0
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not all(s > 0 for s in std):
            raise ValueError(f"expected mean and std of one length, std > 0; got {mean}, {std}")
        self.model = model
        shape = (1, len(mean), 1, 1)
        mean_t = torch.tensor(list(mean), dtype=torch.float32).view(shape)
        self.register_buffer("mean", mean_t, persistent=False)
        std_t = torch.tensor(list(std), dtype=torch.float32).view(shape)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)
