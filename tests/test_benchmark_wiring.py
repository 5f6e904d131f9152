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
    assert "nn.Sequential" in multi.reason
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
