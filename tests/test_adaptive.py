"""Adaptive attacks against classifier + detector, and the evasion metric."""

from __future__ import annotations

import foolbox as fb
import pytest
import torch
from pytorch_ood.detector import Mahalanobis, MaxSoftmax, MultiMahalanobis
from torch.utils.data import DataLoader, TensorDataset

from uniad_plugin.anomalies.adaptive import (
    AdaptiveLinfPGD,
    differentiable_score,
    evasion_rate,
    make_adaptive,
)
from uniad_plugin.detectors.uniform import UniformDetector


@pytest.fixture(scope="module")
def detectors(digits, digits_model):
    loader = DataLoader(digits.train, batch_size=256)
    uni = UniformDetector(digits_model, epochs=10).fit(loader)
    maha = Mahalanobis(digits_model[:8]).fit(loader)
    multi = MultiMahalanobis([digits_model[:2], digits_model[2:4], digits_model[4:5]]).fit(loader)
    return {"uniform": uni, "maha": maha, "multi": multi}


@pytest.mark.parametrize("key", ["uniform", "maha", "multi"])
def test_differentiable_score_equals_predict(detectors, digits, key):
    det = detectors[key]
    x = digits.test.tensors[0][:32].clone().requires_grad_(True)
    s = differentiable_score(det)(x)
    assert torch.allclose(s.detach(), det.predict(x.detach()), rtol=1e-4, atol=1e-3)
    s.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unsupported_detector_is_refused(digits_model):
    with pytest.raises(TypeError, match="expected UniformDetector"):
        differentiable_score(MaxSoftmax(digits_model))


def test_adaptive_attack_lowers_detector_score(detectors, digits, digits_model):
    det = detectors["uniform"]
    data = TensorDataset(*digits.attack.tensors)
    kw = dict(eps=0.2, id_reference=digits.test.tensors[0], steps=20, seed=0, max_samples=60)
    plain = make_adaptive(digits_model, det, data, lam=0.0, **kw)
    adaptive = make_adaptive(digits_model, det, data, lam=5.0, **kw)
    assert len(plain) > 20 and len(adaptive) > 10
    assert adaptive.kind == "AD" and adaptive.info["detector"] == "UniformDetector"
    with torch.no_grad():
        assert (digits_model(adaptive.x).argmax(1) != adaptive.source_labels).all()
    assert (adaptive.x - adaptive.clean).abs().amax() <= 0.2 + 1e-5
    # at 5% false positives on ID data, the adaptive attack is detected far less often
    s_id = det(digits.test.tensors[0])
    n = plain.info["n_attacked"]
    plain_detected = evasion_rate(s_id, det(plain.x), n)["detected"]
    adaptive_detected = evasion_rate(s_id, det(adaptive.x), adaptive.info["n_attacked"])["detected"]
    assert adaptive_detected < 0.5 * plain_detected, (plain_detected, adaptive_detected)


def test_adaptive_attack_is_deterministic(detectors, digits, digits_model):
    data = TensorDataset(*digits.attack.tensors)
    kw = dict(eps=0.2, steps=5, seed=3, max_samples=20)
    a = make_adaptive(digits_model, detectors["maha"], data, **kw)
    b = make_adaptive(digits_model, detectors["maha"], data, **kw)
    assert torch.equal(a.x, b.x)


def test_foolbox_compatible(detectors, digits, digits_model):
    attack = AdaptiveLinfPGD(differentiable_score(detectors["multi"]), lam=1.0, steps=5)
    fmodel = fb.PyTorchModel(digits_model.eval(), bounds=(0, 1))
    x, y = digits.attack.tensors[0][:16], digits.attack.tensors[1][:16]
    _, adv, success = attack(fmodel, x, y, epsilons=0.3)
    assert adv.shape == x.shape and success.dtype == torch.bool


def test_evasion_rate():
    id_scores = torch.arange(100.0)
    adv = torch.tensor([10.0, 50.0, 99.0, 200.0])
    out = evasion_rate(id_scores, adv, n_attacked=8, fpr=0.05)
    assert out["threshold"] == pytest.approx(94.05)
    assert out["success_at_fpr"] == pytest.approx(2 / 8)
    assert out["detected"] == pytest.approx(2 / 8)
    with pytest.raises(ValueError, match="expected fpr"):
        evasion_rate(id_scores, adv, 8, fpr=0)
    with pytest.raises(ValueError, match="n_attacked"):
        evasion_rate(id_scores, adv, 2)
