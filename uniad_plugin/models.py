"""Small reference classifiers and a plain training loop.

These are the models the ``uniad`` command, the examples and the tests use when the user
does not bring their own: a small CNN for scikit-learn's 8x8 digits and a LeNet-sized CNN
for 28x28 MNIST-like images. Both are ``nn.Sequential`` so that every layer has a name.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader


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
        pred = model(x.to(device)).argmax(1).cpu()
        correct += (pred == y).sum().item()
        total += y.numel()
    return correct / max(total, 1)
