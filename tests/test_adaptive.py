"""Adaptive attacks against classifier + detector, and the evasion metric."""

from __future__ import annotations

import dataclasses
import inspect

import foolbox as fb
import pytest
import torch
from pytorch_ood.detector import Mahalanobis, MaxSoftmax, MultiMahalanobis
from torch.utils.data import DataLoader, TensorDataset

from uniad_plugin.anomalies import is_on_grid
from uniad_plugin.anomalies.adaptive import (
    AdaptiveLinfPGD,
    AdaptiveOptions,
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
    adaptive = make_adaptive(digits_model, det, data, lam=1.0, **kw)
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


# ----------------------------------------------------------------------------- value grid


def _attack_data(digits):
    return TensorDataset(*digits.attack.tensors)


@pytest.mark.parametrize("levels", [16, 255])
def test_adaptive_sets_are_on_the_grid(detectors, digits, digits_model, levels):
    adv = make_adaptive(
        digits_model,
        detectors["maha"],
        _attack_data(digits),
        0.2,
        lam=1.0,
        steps=10,
        max_samples=40,
        levels=levels,
    )
    assert len(adv) > 10
    assert is_on_grid(adv.x, levels) and adv.grid_levels == levels
    assert adv.name == "adaptive_pgd[Mahalanobis]@0.2"
    assert (adv.x - adv.clean).abs().amax() <= 0.2 + 1e-6
    assert adv.x.min() >= 0 and adv.x.max() <= 1
    with torch.no_grad():  # the kept, rounded inputs fool the classifier
        assert (digits_model(adv.x).argmax(1) != adv.source_labels).all()
    assert torch.equal(adv.adv_pred, digits_model(adv.x).argmax(1))
    info = adv.info
    assert info["n_success"] == len(adv) <= info["n_success_continuous"] <= info["n_attacked"]
    assert info["success_rate"] == pytest.approx(len(adv) / info["n_attacked"])


def test_continuous_opt_in_is_labelled(detectors, digits, digits_model):
    kw = dict(lam=1.0, steps=10, max_samples=40, seed=1)
    cont = make_adaptive(
        digits_model, detectors["maha"], _attack_data(digits), 0.2, levels=None, **kw
    )
    named = make_adaptive(
        digits_model, detectors["maha"], _attack_data(digits), 0.2, levels=None, name="x", **kw
    )
    assert (
        cont.name == "adaptive_pgd[Mahalanobis]@0.2 (continuous)" and named.name == "x (continuous)"
    )
    assert cont.grid_levels is None and not is_on_grid(cont.x, 255)
    assert cont.info["n_success"] == cont.info["n_success_continuous"]


def test_rounding_is_rechecked(detectors, digits, digits_model):
    """Adversarials that round back to a correct prediction are dropped; both rates recorded."""
    kw = dict(lam=1.0, steps=10, max_samples=60, seed=0)
    data = _attack_data(digits)
    cont = make_adaptive(digits_model, detectors["maha"], data, 0.1, levels=None, **kw)
    grid = make_adaptive(digits_model, detectors["maha"], data, 0.1, levels=16, **kw)
    # same seed, same PGD: the same continuous successes, fewer survive a coarse grid
    assert grid.info["n_success_continuous"] == cont.info["n_success"] > 0
    assert grid.info["success_rate_continuous"] == pytest.approx(cont.info["success_rate"])
    assert 0 < grid.info["n_success"] < cont.info["n_success"]
    with torch.no_grad():
        assert (digits_model(grid.x).argmax(1) != grid.source_labels).all()


def test_rounding_that_undoes_the_attack_keeps_nothing(
    detectors, digits, digits_model, monkeypatch
):
    import uniad_plugin.anomalies.adaptive as adaptive

    monkeypatch.setattr(adaptive, "round_adversarial", lambda adv, src, **kw: src.clone())
    adv = make_adaptive(
        digits_model, detectors["maha"], _attack_data(digits), 0.2, steps=5, max_samples=30
    )
    assert len(adv) == 0 and adv.info["n_success"] == 0
    assert adv.info["n_success_continuous"] > 0


# ----------------------------------------------------------------------------- options


def test_old_keyword_calls_match_options(detectors, digits, digits_model):
    old = dict(
        lam=2.0,
        id_reference=digits.test.tensors[0],
        steps=5,
        rel_stepsize=0.1,
        kappa=0.5,
        bounds=(0.0, 1.0),
        batch_size=16,
        seed=2,
        max_samples=24,
        name="old",
    )
    data = _attack_data(digits)
    a = make_adaptive(digits_model, detectors["multi"], data, 0.2, **old)
    b = make_adaptive(digits_model, detectors["multi"], data, 0.2, options=AdaptiveOptions(**old))
    # keywords override the options object
    c = make_adaptive(
        digits_model,
        detectors["multi"],
        data,
        0.2,
        options=AdaptiveOptions(**{**old, "seed": 9, "name": "other"}),
        seed=2,
        name="old",
    )
    assert a.name == b.name == c.name == "old"
    assert torch.equal(a.x, b.x) and torch.equal(a.x, c.x)
    assert a.info["steps"] == 5 and a.info["kappa"] == 0.5 and a.info["grid_levels"] == 255


def test_options_are_checked(detectors, digits, digits_model):
    opts = AdaptiveOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.lam = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError, match="unknown"):
        make_adaptive(digits_model, detectors["maha"], _attack_data(digits), 0.2, epsilon=1)
    with pytest.raises(TypeError, match="AdaptiveOptions"):
        make_adaptive(digits_model, detectors["maha"], _attack_data(digits), 0.2, options={})
    with pytest.raises(ValueError, match="levels"):
        AdaptiveOptions(levels=0)
    with pytest.raises(ValueError, match="bounds"):
        AdaptiveOptions(bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="eps"):
        make_adaptive(digits_model, detectors["maha"], _attack_data(digits), 0.0)


def test_make_adaptive_has_at_most_ten_parameters():
    assert len(inspect.signature(make_adaptive).parameters) <= 10
