"""Every built-in detector the benchmark wires works on CUDA.

pytorch-ood's KNN hands the features it is fitted on to scikit-learn without moving them to
the CPU, so on ``--device cuda`` it failed with "can't convert cuda:0 device type tensor to
numpy". The wiring puts :class:`~uniad_plugin.benchmark.wiring.CpuFeatures` in front of it.
Without a GPU, a tensor that reports another device (and refuses ``.numpy()`` as a CUDA
tensor does) stands in for a CUDA tensor.
"""

from __future__ import annotations

import copy

import pytest
import torch
from pytorch_ood.api import FeaturesDetector
from pytorch_ood.detector import KNN
from torch import Tensor

from tests.benchmark_helpers import SHAPE
from uniad_plugin.anomalies import gaussian_noise
from uniad_plugin.benchmark import UnifiedBenchmark, build_detectors, fit_detectors
from uniad_plugin.benchmark.wiring import (
    CpuFeatures,
    available_detectors,
    is_builtin,
    with_cpu_features,
)
from uniad_plugin.models import digits_cnn

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class OffCpu(Tensor):
    """CPU data that reports the ``meta`` device and, like a CUDA tensor, refuses NumPy."""

    @property
    def device(self) -> torch.device:
        return torch.device("meta")

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert meta device type tensor to numpy")

    def cpu(self, *args, **kwargs) -> Tensor:
        return self.as_subclass(Tensor).clone()


def off_cpu(t: Tensor) -> OffCpu:
    return t.as_subclass(OffCpu)


class NumpyOnly(FeaturesDetector):
    """A fake built-in whose fit and predict need CPU features (as a NumPy path does)."""

    def __init__(self) -> None:
        self.encoder = None
        self.seen: list[str] = []

    @staticmethod
    def _require_cpu(t: Tensor, what: str) -> None:
        if t.device.type != "cpu":
            raise TypeError(f"expected {what} on the CPU, got {t.device.type}")

    def fit(self, loader):
        return self

    def fit_features(self, z: Tensor, labels: Tensor):
        self._require_cpu(z, "features")
        self._require_cpu(labels, "labels")
        self.seen.append(type(z).__name__)
        self.mean = torch.from_numpy(z.numpy().mean(0))
        return self

    def predict(self, x):
        raise NotImplementedError

    def predict_features(self, z: Tensor) -> Tensor:
        self._require_cpu(z, "features")
        return torch.from_numpy(((z.numpy() - self.mean.numpy()) ** 2).sum(1))


def test_the_fake_device_fails_like_cuda_without_the_adapter():
    z, y = off_cpu(torch.rand(20, 4)), torch.arange(20) % 2
    with pytest.raises(TypeError, match="on the CPU"):
        NumpyOnly().fit_features(z, y)
    with pytest.raises(TypeError, match="to numpy"):
        KNN(None, k=3).fit_features(z, y)


def test_adapter_hands_cpu_tensors_and_returns_scores_on_the_input_device():
    z, y = torch.rand(20, 4), torch.arange(20) % 2
    det = with_cpu_features(NumpyOnly)()
    assert isinstance(det, CpuFeatures) and type(det).__name__ == "NumpyOnly"
    det.fit_features(off_cpu(z), off_cpu(y))
    assert det.seen == ["Tensor"]
    scores = det.predict_features(off_cpu(z[:5]))
    assert scores.device.type == "meta" and scores.shape == (5,)
    cpu_scores = det.predict_features(z[:5])
    assert cpu_scores.device.type == "cpu"
    assert torch.allclose(cpu_scores, NumpyOnly().fit_features(z, y).predict_features(z[:5]))


def test_knn_behind_the_adapter_fits_features_from_another_device():
    z, y = torch.rand(30, 4), torch.arange(30) % 3
    knn = with_cpu_features(KNN)(None, k=3).fit_features(off_cpu(z), off_cpu(y))
    plain = KNN(None, k=3).fit_features(z, y)
    assert torch.equal(knn.predict_features(z[:4]), plain.predict_features(z[:4]))
    assert knn.predict_features(off_cpu(z[:4])).device.type == "meta"


def test_wired_knn_uses_the_adapter_and_still_counts_as_a_builtin():
    (entry,) = build_detectors(["KNN"], digits_cnn().eval(), torch.rand(4, *SHAPE))
    assert entry.ok and isinstance(entry.detector, KNN) and isinstance(entry.detector, CpuFeatures)
    assert is_builtin(entry.detector) and is_builtin(KNN(None))
    assert with_cpu_features(KNN) is with_cpu_features(KNN)
    with pytest.raises(TypeError, match="fit_features"):
        with_cpu_features(int)


def _fit_and_score_builtins(digits_model, digits, device: str) -> tuple[dict, dict]:
    """Build, fit and score every wired built-in on ``device``: entries and scores by name."""
    names = [n for n, d in available_detectors().items() if d.startswith("pytorch-ood")]
    model = copy.deepcopy(digits_model).to(device).eval()
    x = digits.test.tensors[0]
    entries = build_detectors(names, model, x[:4].to(device), device=device)
    fit_detectors(entries, digits.train, device=device, progress=False)
    noise = gaussian_noise(40, SHAPE, seed=1)
    bench = UnifiedBenchmark(digits.train, digits.test, [noise], device=device, progress=False)
    bench.evaluate(entries)
    return {e.name: e for e in entries}, bench.scores


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_every_wired_builtin_fits_and_scores_on_the_device(digits_model, digits, device):
    """No built-in of the wiring table fails on CUDA (KNN did)."""
    entries, scores = _fit_and_score_builtins(digits_model, digits, device)
    failed = {n: e.reason for n, e in entries.items() if e.status == "failed"}
    assert failed == {}
    ok = [n for n, e in entries.items() if e.ok]
    assert "KNN" in ok and set(ok) <= set(scores)
    for name in ok:
        assert torch.isfinite(scores[name]["ID"]).all(), name


@needs_cuda
def test_knn_scores_on_cuda_equal_those_on_cpu(digits_model, digits):
    """The adapter changes where KNN computes, not what."""
    knn = {
        device: _fit_and_score_builtins(digits_model, digits, device)[1]["KNN"]["ID"]
        for device in ("cpu", "cuda")
    }
    assert torch.allclose(knn["cpu"], knn["cuda"], atol=1e-4)
