"""The reference architectures and the accuracy helper."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from uniad_plugin.models import (
    SmallResNet,
    accuracy,
    resnet20_cifar,
    resnet_cifar,
    vgg_cifar,
)


class _Tupled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x), x


def test_accuracy_reads_the_logits_of_a_tuple_output_without_a_graph():
    model = _Tupled()
    x = torch.randn(12, 4)
    with torch.no_grad():
        y = model(x)[0].argmax(1)
    assert accuracy(model, DataLoader(TensorDataset(x, y), batch_size=5)) == 1.0


def test_reference_cifar_architectures():
    x = torch.rand(2, 3, 32, 32)
    r20, vgg = resnet20_cifar().eval(), vgg_cifar().eval()
    assert sum(p.numel() for p in r20.parameters()) == 272_474
    assert sum(p.numel() for p in vgg.parameters()) == 288_746
    assert isinstance(vgg, nn.Sequential)
    with torch.no_grad():
        assert r20(x).shape == vgg(x).shape == (2, 10)
        # the head reads the penultimate features: forward == fc(features)
        assert torch.allclose(r20(x), r20.fc(r20.features(x)))
    assert [n for n, _ in r20.named_children()][3:6] == ["layer1", "layer2", "layer3"]


def test_one_block_per_stage_keeps_the_state_dict_keys():
    """``blocks=1`` is the earlier SmallResNet: cached weights keep loading."""
    keys = set(resnet_cifar().state_dict())
    assert keys == set(SmallResNet(10, 3, (16, 32, 64)).state_dict())
    assert "layer1.conv1.weight" in keys and "layer1.0.conv1.weight" in set(
        resnet20_cifar().state_dict()
    )
