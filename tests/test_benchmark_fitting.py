"""fit_detectors: shared representations fit like each detector's own fit; failures are kept."""

from __future__ import annotations

import torch
from pytorch_ood.detector import KNN, Mahalanobis
from torch.utils.data import DataLoader

from tests.benchmark_helpers import FailingDetector
from uniad_plugin.benchmark import DetectorEntry, ModelParts, PenultimateEncoder, fit_detectors


def test_shared_fit_equals_own_fit(digits_model, digits):
    encoder = ModelParts.from_model(digits_model, digits.test.tensors[0][:4]).encoder
    assert isinstance(encoder, PenultimateEncoder)
    shared = Mahalanobis(encoder)
    entries = fit_detectors(
        [shared, KNN(encoder, k=5), DetectorEntry("bad", FailingDetector("fit"))],
        digits.train,
        progress=False,
    )
    assert [e.status for e in entries] == ["ok", "ok", "failed"]
    assert entries[2].reason == "fit failed: RuntimeError: cannot fit"
    own = Mahalanobis(encoder).fit(DataLoader(digits.train, batch_size=256))
    x = digits.test.tensors[0]
    assert torch.allclose(shared.predict(x), own.predict(x), atol=1e-4)


def test_names_of_repeated_detectors_are_made_distinct(digits_model, digits):
    entries = fit_detectors(
        [FailingDetector("none"), FailingDetector("none")], digits.train, progress=False
    )
    assert [e.name for e in entries] == ["FailingDetector", "FailingDetector#2"]
