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
from uniad_plugin.anomalies.blackbox import SquareOptions, make_square, square_fraction
from uniad_plugin.detectors.uniform import UniformDetector


@pytest.fixture(scope="module")
def detectors(digits, digits_model):
    loader = DataLoader(digits.train, batch_size=256)
    uni = UniformDetector(digits_model).fit(loader)
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ----------------------------------------------------------------------------- gradient-free


class _NoGradDetector:
    """A detector that only answers ``predict``, and only with autograd off."""

    def __init__(self, detector):
        self.detector = detector
        self.calls = 0

    def predict(self, x):
        assert not torch.is_grad_enabled() and not x.requires_grad
        self.calls += 1
        return self.detector.predict(x)

    def differentiable_score(self, x):
        raise AssertionError("a gradient-free attack asked for a differentiable score")


class _NoGradModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        assert not torch.is_grad_enabled() and not x.requires_grad
        return self.model(x)


def _square(detector, model, digits, **kw):
    kw = {"queries": 100, "max_samples": 40, "seed": 0, **kw}
    return make_square(model, detector, _attack_data(digits), kw.pop("eps", 0.2), **kw)


@pytest.mark.slow
def test_square_is_deterministic_within_eps_and_on_the_grid(detectors, digits, digits_model):
    a = _square(detectors["uniform"], digits_model, digits, levels=16, batch_size=16)
    b = _square(detectors["uniform"], digits_model, digits, levels=16, batch_size=16)
    c = _square(detectors["uniform"], digits_model, digits, levels=16, batch_size=16, seed=1)
    assert len(a) > 5 and torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert is_on_grid(a.x, 16) and a.name == "square[UniformDetector]@0.2"
    assert (a.x - a.clean).abs().amax() <= 0.2 + 1e-6
    assert a.x.min() >= 0 and a.x.max() <= 1
    with torch.no_grad():
        assert (digits_model(a.x).argmax(1) != a.source_labels).all()
    info = a.info
    assert info["attack"] == "square_linf" and info["queries"] == 100 and info["eps"] == 0.2
    assert info["lam"] == 1.0 and info["n_attacked"] == 40
    assert 0 < info["success_rate"] <= info["success_rate_continuous"] <= 1


def test_square_uses_forward_passes_only(detectors, digits, digits_model):
    det = _NoGradDetector(detectors["uniform"])
    model = _NoGradModel(digits_model)
    adv = _square(det, model, digits, queries=20, max_samples=16, batch_size=8)
    # the standardisation on the 16 clean inputs, then 20 queries, both in two batches of 8
    assert det.calls == 2 + 2 * 20
    assert adv.info["detector"] == "_NoGradDetector"


@pytest.mark.slow
def test_square_objective_lowers_detector_score(detectors, digits, digits_model):
    det = detectors["uniform"]
    ref = digits.test.tensors[0]
    kw = dict(queries=200, max_samples=60, id_reference=ref)
    plain = _square(det, digits_model, digits, lam=0.0, **kw)
    adaptive = _square(det, digits_model, digits, lam=1.0, **kw)
    assert len(plain) > 20 and len(adaptive) > 5
    # the detector term of the objective lowers the detector's score on the kept adversarials
    assert det.predict(adaptive.x).median() < det.predict(plain.x).median() - 1.0
    s_id = det.predict(ref)
    assert (
        evasion_rate(s_id, det.predict(plain.x), 60)["success_at_fpr"]
        < evasion_rate(s_id, det.predict(adaptive.x), 60)["success_at_fpr"]
    )


def test_square_options_are_checked(detectors, digits, digits_model):
    data = _attack_data(digits)
    with pytest.raises(TypeError, match="unknown"):
        make_square(digits_model, detectors["uniform"], data, 0.2, steps=5)
    with pytest.raises(TypeError, match="SquareOptions"):
        make_square(digits_model, detectors["uniform"], data, 0.2, options=AdaptiveOptions())
    with pytest.raises(ValueError, match="queries"):
        SquareOptions(queries=0)
    with pytest.raises(ValueError, match="p_init"):
        SquareOptions(p_init=0.0)
    with pytest.raises(ValueError, match="eps"):
        make_square(digits_model, detectors["uniform"], data, 0.0)
    a = make_square(
        digits_model, detectors["uniform"], data, 0.2, options=SquareOptions(queries=5), seed=0
    )
    assert a.info["queries"] == 5 and len(inspect.signature(make_square).parameters) <= 10


def test_square_schedule_halves_the_window():
    assert square_fraction(0.8, 0, 1000) == 0.8
    assert square_fraction(0.8, 2, 1000) == 0.4  # past 10 of 10,000 rescaled iterations
    assert square_fraction(0.8, 999, 1000) == pytest.approx(0.8 / 512)
