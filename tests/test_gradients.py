"""ConfoundingGradients: features against an autograd reference, separation, known anomalies."""

from __future__ import annotations

import io

import pytest
import torch
from pytorch_ood.api import RequiresFittingException
from pytorch_ood.metrics import OODMetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from uniad_plugin.detectors.gradients import ConfoundingGradients


def auroc(s_id: torch.Tensor, s_ood: torch.Tensor) -> float:
    m = OODMetrics()
    labels = torch.cat([torch.zeros(len(s_id)), -torch.ones(len(s_ood))]).long()
    m.update(torch.cat([s_id, s_ood]).detach(), labels)
    return m.compute()["AUROC"]


def blur(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.avg_pool2d(x, 3, 1, 1)


@pytest.fixture(scope="module")
def fitted(digits, digits_model):
    return ConfoundingGradients(digits_model).fit(DataLoader(digits.train, batch_size=128))


@pytest.fixture(scope="module")
def supervised(digits, digits_model):
    x, y = digits.train.tensors
    xa = blur(x[-100:])
    ds = TensorDataset(torch.cat([x, xa]), torch.cat([y, -torch.ones(100, dtype=torch.long)]))
    det = ConfoundingGradients(digits_model, known_anomalies=True)
    return det.fit(DataLoader(ds, batch_size=128, shuffle=False))


def reference_features(model, x, target_fn):
    rows = []
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        out = model(x[i : i + 1])
        target_fn(out).backward()
        rows.append(torch.stack([p.grad.pow(2).sum() for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


@pytest.mark.parametrize("n_ones", [None, 0, 3])
def test_features_are_squared_norms_of_the_confounding_bce_gradient(digits_model, digits, n_ones):
    x = digits.test.tensors[0][:5]
    n = 10 if n_ones is None else n_ones
    y_c = (torch.arange(10) < n).float()[None]

    def loss(out):
        p = torch.sigmoid(out)
        return -(y_c * p.log() + (1 - y_c) * (1 - p).log()).sum()

    ref = reference_features(digits_model, x, loss)
    feats, logits = ConfoundingGradients(digits_model, n_ones=n_ones).extract(x)
    assert feats.shape == (5, 8)  # one per weight and bias of the 4 layers
    torch.testing.assert_close(feats, ref, rtol=1e-3, atol=1e-9)
    with torch.no_grad():
        torch.testing.assert_close(logits, digits_model(x), rtol=1e-4, atol=1e-5)


def test_softmax_activation(digits_model, digits):
    x = digits.test.tensors[0][:4]

    def loss(out):
        p = out.softmax(1)
        return nn.functional.binary_cross_entropy(p, torch.ones_like(p), reduction="sum")

    feats, _ = ConfoundingGradients(digits_model, activation="softmax").extract(x)
    torch.testing.assert_close(
        feats, reference_features(digits_model, x, loss), rtol=1e-3, atol=1e-9
    )


def test_parameter_subset(digits_model, digits):
    det = ConfoundingGradients(digits_model, params=["8.bias", "8.weight"])
    feats, _ = det.extract(digits.test.tensors[0][:3])
    assert feats.shape == (3, 2) and det.params == ["8.weight", "8.bias"]


def test_separates_noise_and_inverted_digits(fitted, digits):
    x = digits.test.tensors[0]
    s_id = fitted(x)
    noise = torch.rand((300, *x.shape[1:]), generator=torch.Generator().manual_seed(3))
    # one Gaussian for all classes (per_class=False) reaches only about 0.7 on noise
    assert auroc(s_id, fitted(noise)) > 0.9
    assert auroc(s_id, fitted(1 - x)) > 0.98


def test_predict_structured_matches_predict(fitted, digits):
    x = digits.test.tensors[0][:32]
    feats, logits = fitted.extract(x)
    assert torch.equal(fitted.predict_structured(feats, logits), fitted(x))
    with pytest.raises(ValueError, match="logits"):
        fitted.predict_structured(feats)
    with pytest.raises(ValueError, match="8 features"):
        fitted.predict_structured(feats[:, :3], logits)


@pytest.mark.slow
def test_known_anomalies_train_the_classifier(supervised, fitted, digits):
    assert supervised.classifier is not None and fitted.classifier is None
    # the Gaussians are fitted on the ID rows only, as without known anomalies
    torch.testing.assert_close(supervised.centers, fitted.centers, rtol=1e-4, atol=1e-5)
    x = digits.test.tensors[0]
    a_clf = auroc(supervised(x), supervised(blur(x)))
    a_gauss = auroc(fitted(x), fitted(blur(x)))
    assert a_clf > 0.98 and a_clf > a_gauss, (a_clf, a_gauss)


@pytest.mark.slow
def test_known_anomalies_the_gaussian_cannot_see():
    """Anomalies at the ID mean: the Gaussian ranks them most normal, the classifier learns them."""
    g = torch.Generator().manual_seed(0)
    t_id = torch.randn(600, 4, generator=g)
    t_anom = 0.05 * torch.randn(60, 4, generator=g)
    feats = torch.cat([t_id, t_anom]).exp()
    y = torch.cat([torch.zeros(600), -torch.ones(60)]).long()
    pred = torch.zeros(660, dtype=torch.long)
    det = ConfoundingGradients(None, epochs=200, known_anomalies=True)
    det.fit_structured(feats, y, pred, num_classes=2)
    gauss = ConfoundingGradients(None).fit_structured(feats[:600], y[:600], pred[:600])
    t_test_id, t_test_anom = (
        torch.randn(300, 4, generator=g),
        0.05 * torch.randn(60, 4, generator=g),
    )
    p_id, p_anom = torch.zeros(300, dtype=torch.long), torch.zeros(60, dtype=torch.long)
    s_id, s_anom = (
        det.predict_structured(t_test_id.exp(), p_id),
        det.predict_structured(t_test_anom.exp(), p_anom),
    )
    assert auroc(s_id, s_anom) > 0.9
    assert (
        auroc(
            gauss.predict_structured(t_test_id.exp(), p_id),
            gauss.predict_structured(t_test_anom.exp(), p_anom),
        )
        < 0.2
    )


@pytest.mark.slow
def test_state_round_trip_with_classifier(supervised, digits_model, digits):
    buf = io.BytesIO()
    torch.save(supervised.state_dict(), buf)
    buf.seek(0)
    restored = ConfoundingGradients(digits_model).load_state_dict(
        torch.load(buf, weights_only=True)
    )
    x = digits.test.tensors[0][:64]
    assert restored.classifier is not None
    assert torch.equal(restored(x), supervised(x))


def test_single_gaussian_variant_and_its_state(digits_model, digits):
    det = ConfoundingGradients(digits_model, per_class=False)
    det.fit(DataLoader(digits.train, batch_size=256))
    assert det.centers.shape == (1, 8) and 0 <= det.fitted_shrinkage <= 1  # Ledoit-Wolf
    restored = ConfoundingGradients(digits_model).load_state_dict(det.state_dict())
    x = digits.test.tensors[0][:16]
    assert torch.equal(restored(x), det(x)) and restored.per_class is False


def test_errors(fitted, digits_model, digits):
    x = digits.test.tensors[0]
    with pytest.raises(RequiresFittingException):
        ConfoundingGradients(digits_model).predict(x[:2])
    with pytest.raises(ValueError, match="n_ones"):
        ConfoundingGradients(digits_model, n_ones=1)
    with pytest.raises(ValueError, match="n_ones"):
        ConfoundingGradients(digits_model, n_ones=11).fit(DataLoader(digits.train, batch_size=256))
    with pytest.raises(ValueError, match="unknown"):
        ConfoundingGradients(digits_model, params=["fc.weight"])
    with pytest.raises(ValueError, match="transform"):
        ConfoundingGradients(digits_model, transform="sqrt")
    with pytest.raises(ValueError, match=r"shape \(B, 1, 8, 8\)"):
        fitted(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="empty"):
        ConfoundingGradients(digits_model).fit(
            DataLoader(TensorDataset(x[:0], x[:0]), batch_size=4)
        )
    with pytest.raises(ValueError, match="logits"):
        ConfoundingGradients(digits_model).fit_structured(torch.rand(20, 8), torch.zeros(20).long())
    assert fitted(x[:0]).shape == (0,)


def test_fit_from_collected_shards_equals_fit(digits, digits_model):
    """A distributed fit extracts shards and concatenates them: the same state as one fit."""
    x, y = digits.train.tensors[0][:256], digits.train.tensors[1][:256]
    whole = ConfoundingGradients(digits_model).fit(DataLoader(TensorDataset(x, y), batch_size=64))
    det = ConfoundingGradients(digits_model)
    parts = [
        det.collect_fit_inputs(DataLoader(TensorDataset(x[s], y[s]), batch_size=64))
        for s in (slice(0, 128), slice(128, 256))
    ]
    joined = {k: torch.cat([p[k] for p in parts]) for k in ("features", "y", "logits")}
    det.fit_collected({**joined, "num_classes": 10, "input_shape": tuple(x.shape[1:])})
    assert det.input_shape == whole.input_shape
    x_test = digits.test.tensors[0][:32]
    torch.testing.assert_close(det(x_test), whole(x_test))
