"""Shared pieces of the benchmark tests: small anomaly sets and toy detectors."""

from __future__ import annotations

from pytorch_ood.api import Detector

from uniad_plugin.anomalies import AnomalySet, gaussian_noise, uniform_noise

SHAPE = (1, 8, 8)


def _sets(digits):
    """Two noise sets, one OOD-like set (shifted ID images) and one 'AD' set (flipped images)."""
    x = digits.attack.tensors[0]
    return [
        gaussian_noise(120, SHAPE, seed=1),
        uniform_noise(80, SHAPE, seed=2),
        AnomalySet(x[:60].flip(-1), "OOD", "flipped"),
        AnomalySet(x[60:100].transpose(-1, -2).contiguous(), "AD", "transposed"),
    ]


class CountingDetector(Detector):
    """Scores by the mean pixel value and counts how many samples it scored."""

    def __init__(self):
        self.seen = 0

    def predict(self, x):
        self.seen += len(x)
        return -x.flatten(1).mean(1)


class FailingDetector(Detector):
    """Raises in fit, in predict, or only on inputs that look like noise."""

    requires_fit = True

    def __init__(self, where: str):
        self.where = where

    def fit(self, loader):
        if self.where == "fit":
            raise RuntimeError("cannot fit")
        return self

    def predict(self, x):
        if self.where == "predict":
            raise RuntimeError("cannot predict")
        if self.where == "noise" and x.mean() > 0.45:
            raise RuntimeError("noise breaks me")
        return x.flatten(1).std(1)
