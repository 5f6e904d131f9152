"""Small models of common architectures, built in the tests (random weights)."""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn


def tiny_vit(num_classes: int = 10) -> nn.Module:
    """A torchvision ``VisionTransformer`` on 3x16x16 inputs: 4 blocks of 16 channels."""
    return torchvision.models.VisionTransformer(
        image_size=16,
        patch_size=4,
        num_layers=4,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=num_classes,
    )


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a skip connection (a 1x1 conv-BN where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    """Stem, three stages of two residual blocks (stride-2 downsampling), pooling, ``fc``."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(width, width, 1)
        self.layer2 = self._stage(width, 2 * width, 2)
        self.layer3 = self._stage(2 * width, 4 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    @staticmethod
    def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(ResidualBlock(cin, cout, stride), ResidualBlock(cout, cout, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tiny_mlp(num_classes: int = 10) -> nn.Module:
    """Only ``nn.Linear`` and activations, on flattened 1x8x8 inputs."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 16),
        nn.GELU(),
        nn.Linear(16, num_classes),
    )


def tiny_rgb_cnn(num_classes: int = 10) -> nn.Sequential:
    """A per-pixel colour classifier for 3xHxW inputs (a 1x1 convolution, pooling to 4x4, a
    linear head): it learns images of flat class colours in a few dozen steps."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(8 * 16, num_classes),
    )


def tiny_rgb_cnn_3() -> nn.Sequential:
    """:func:`tiny_rgb_cnn` with 3 classes (for ``--arch``, which passes no arguments)."""
    return tiny_rgb_cnn(3)


def tiny_rgb_cnn_100() -> nn.Sequential:
    """:func:`tiny_rgb_cnn` with 100 classes (CIFAR-100)."""
    return tiny_rgb_cnn(100)


def tiny_rgb_cnn_200() -> nn.Sequential:
    """:func:`tiny_rgb_cnn` with 200 classes (ImageNet-200)."""
    return tiny_rgb_cnn(200)


def fitted_resnet18(x: torch.Tensor, y: torch.Tensor, num_classes: int, path) -> nn.Module:
    """torchvision's resnet18 with random (seeded) features and a linear head fitted on them,
    saved as a state dict at ``path``: a user's ``--arch torchvision:resnet18 --model PATH``
    model that classifies ``x`` well, in seconds instead of a training run."""
    from torch.utils.data import DataLoader, TensorDataset
    from torchvision.models import resnet18

    from uniad_plugin.models import train_classifier

    torch.manual_seed(0)
    net = resnet18(weights=None, num_classes=num_classes).eval()
    head, net.fc = net.fc, nn.Identity()
    with torch.no_grad():
        features = net(x)
        scale = features.std()
    loader = DataLoader(TensorDataset(features / scale, y), batch_size=20)
    train_classifier(head, loader, epochs=200, lr=1e-2, seed=0)
    with torch.no_grad():
        head.weight /= scale
    net.fc = head
    torch.save(net.state_dict(), path)
    return net
