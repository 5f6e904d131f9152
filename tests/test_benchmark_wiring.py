"""Detectors built by name and wired to a classifier; skipped and failed entries."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.benchmark_helpers import SHAPE
from uniad_plugin.benchmark import (
    DEFAULT_DETECTORS,
    ConfigError,
    available_detectors,
    build_detectors,
    check_detector_names,
)
from uniad_plugin.models import digits_cnn


class _Wrapped(nn.Module):
    """A non-Sequential classifier (a head named ``fc``)."""

    def __init__(self):
        super().__init__()
        seq = digits_cnn()
        self.body = seq[:-1]
        self.fc = seq[-1]

    def forward(self, x):
        return self.fc(self.body(x))


class _NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_build_detectors_by_name_and_skips():
    x = torch.rand(4, *SHAPE)
    names = ["maxsoftmax", "Mahalanobis", "MultiMahalanobis", "ViM", "UniformDetector"]
    entries = build_detectors(names, _Wrapped().eval(), x)
    status = {e.name: e.status for e in entries}
    assert status == {
        "MaxSoftmax": "ok",
        "Mahalanobis": "ok",
        "MultiMahalanobis": "skipped",
        "ViM": "ok",
        "UniformDetector": "ok",
    }
    multi = next(e for e in entries if e.name == "MultiMahalanobis")
    assert "named stages" in multi.reason
    entries = build_detectors(["Mahalanobis", "MaxSoftmax"], _NoLinear().eval(), x)
    assert entries[0].status == "skipped" and "penultimate" in entries[0].reason
    assert entries[1].ok


def test_build_detectors_errors():
    x = torch.rand(2, *SHAPE)
    with pytest.raises(ConfigError, match="unknown detector 'Nope'.*MaxSoftmax.*UniformDetector"):
        build_detectors(["Nope"], digits_cnn().eval(), x)
    with pytest.raises(ConfigError, match="twice"):
        build_detectors(["KNN", "knn"], digits_cnn().eval(), x)
    entries = build_detectors(
        ["KNN"], digits_cnn().eval(), x, detector_kwargs={"KNN": {"bogus": 1}}
    )
    assert entries[0].status == "failed" and entries[0].reason.startswith("build failed")


def test_available_detectors_include_plugins_and_defaults():
    names = available_detectors()
    assert "UniformDetector" in names and "plugin" in names["UniformDetector"]
    assert set(DEFAULT_DETECTORS) <= set(names)


def test_plugin_detector_gets_seed(digits_model, digits):
    (entry,) = build_detectors(
        ["UniformDetector"], digits_model, digits.test.tensors[0][:4], seed=7
    )
    assert entry.ok and entry.detector.seed == 7


def test_check_detector_names_is_case_insensitive():
    assert check_detector_names(["knn", "MAXSOFTMAX"]) == ["KNN", "MaxSoftmax"]
    with pytest.raises(ConfigError, match="unknown detector 'x'"):
        check_detector_names(["x"])


class _ExtraBetweenStages(nn.Module):
    """Named stages, but forward does more between them than apply them."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = nn.Conv2d(4, 4, 3, padding=1)
        self.layer2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.layer1(self.conv1(x))
        return self.fc(self.layer2(h * 2).mean(dim=(2, 3)))


def _stage_models():
    from torchvision.models import resnet18

    from uniad_plugin.models import Normalized, resnet20_cifar, resnet_cifar

    torch.manual_seed(0)
    return {
        "SmallResNet": resnet_cifar(3),
        "ResNet-20": resnet20_cifar(3),
        "torchvision ResNet-18": resnet18(num_classes=3),
        "Normalized ResNet-20": Normalized(resnet20_cifar(3), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)),
    }


@pytest.mark.parametrize("name", list(_stage_models()))
def test_multimahalanobis_is_wired_to_named_stages(name):
    """A ResNet's layer1, layer2, ... become MultiMahalanobis's consecutive blocks: the stem
    (and a Normalized wrapper's normalisation) in front of the first, checked on the probe."""
    from torch.utils.data import DataLoader, TensorDataset

    from uniad_plugin.benchmark.wiring import named_stage_blocks

    model = _stage_models()[name].eval()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    blocks, why = named_stage_blocks(model, x)
    assert why is None and len(blocks) == (4 if "18" in name else 3)
    stages = [m for n, m in dict(model.named_modules()).items() if n.endswith("layer2")]
    seen = []
    hook = stages[0].register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        model(x)
        composed = blocks[1](blocks[0](x))
    hook.remove()
    assert torch.allclose(composed, seen[0], atol=1e-5)
    (entry,) = build_detectors(["MultiMahalanobis"], model, x[:2])
    assert entry.ok, entry.reason
    y = torch.arange(12) % 3
    xs = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    entry.detector.fit(DataLoader(TensorDataset(xs, y), batch_size=6))
    scores = entry.detector(x)
    assert scores.shape == (6,) and torch.isfinite(scores).all()


def test_named_stages_with_more_in_forward_are_refused():
    from uniad_plugin.benchmark.wiring import named_stage_blocks

    blocks, why = named_stage_blocks(_ExtraBetweenStages().eval(), torch.rand(2, 3, 8, 8))
    assert blocks is None and "more between the named stages" in why


@pytest.mark.slow
def test_every_builtin_wired_to_resnets_and_vggs():
    """ReAct, VRA, SHE, NNGuide, DICE, ASH, SCALE, RankFeat, ... for any model with a linear
    head (feature maps: those the head's input is the spatial mean of); each fits and scores."""
    import warnings

    from torch.utils.data import DataLoader, TensorDataset

    from uniad_plugin.benchmark.wiring import _BUILTINS, NOT_WIRED
    from uniad_plugin.models import resnet20_cifar, train_classifier, vgg_cifar

    assert not set(NOT_WIRED) & set(_BUILTINS)
    import pytorch_ood.detector as d

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    import numpy as np

    from tests.image_data import class_images

    y = torch.arange(60) % 3  # flat class colours plus noise: learnt in a few steps
    images = class_images(y.numpy(), 32, np.random.default_rng(0))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    for model in (resnet20_cifar(3), vgg_cifar(3)):
        # a few steps on the data: SHE keeps the patterns of correctly classified inputs
        loader = DataLoader(TensorDataset(x, y), batch_size=20, shuffle=True, generator=gen)
        train_classifier(model, loader, epochs=10, lr=3e-3, seed=0)
        entries = build_detectors(list(_BUILTINS), model, x[:4])
        assert all(e.ok for e in entries), [(e.name, e.reason) for e in entries if not e.ok]
        for e in entries:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if e.name == "KNN":
                    e.detector.k = 5
                if e.detector.requires_fit:
                    e.detector.fit(DataLoader(TensorDataset(x, y), batch_size=20))
                s = e.detector(x[:5])
            assert s.shape == (5,) and torch.isfinite(s).all(), e.name
        assert all(isinstance(e.detector, getattr(d, e.name)) for e in entries)


def test_feature_map_detectors_are_skipped_with_the_reason_without_maps():
    from tests.benchmark_helpers import SHAPE

    entries = build_detectors(
        ["ASH", "SCALE", "RankFeat"], _NoLinear().eval(), torch.rand(2, *SHAPE)
    )
    assert all(e.status == "skipped" and "feature maps" in e.reason for e in entries)
