"""Shared fixtures: a small CNN trained on scikit-learn's digits (a few seconds on CPU)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from uniad_plugin.data import digits_splits
from uniad_plugin.models import accuracy, digits_cnn, train_classifier


@pytest.fixture(scope="session")
def digits():
    """Disjoint train/test/attack splits of the digits (images 1x8x8 in [0, 1])."""
    return digits_splits(seed=0)


@pytest.fixture(scope="session")
def digits_model(digits):
    """A digits CNN trained for a few seconds, in eval mode. Tests must not modify it."""
    torch.manual_seed(0)
    model = digits_cnn()
    loader = DataLoader(
        digits.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    train_classifier(model, loader, epochs=30, seed=0)
    acc = accuracy(model, DataLoader(digits.test, batch_size=256))
    assert acc > 0.9, f"fixture model should learn the digits, got accuracy {acc:.3f}"
    return model


@pytest.fixture
def train_loader(digits):
    return DataLoader(digits.train, batch_size=128, shuffle=False)


@pytest.fixture
def test_loader(digits):
    return DataLoader(digits.test, batch_size=128, shuffle=False)
