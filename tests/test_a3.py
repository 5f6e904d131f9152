"""A3 (Activation Anomaly Analysis): behaviour beyond the common detector suite."""

from __future__ import annotations

import io

import pytest
import torch
from pytorch_ood.api import RequiresFittingException
from pytorch_ood.metrics import OODMetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from uniad_plugin.detectors.a3 import A3
from uniad_plugin.models import digits_cnn
from uniad_plugin.nn.alarms import default_hidden
from uniad_plugin.nn.taps import LayerTaps


def auroc(s_in: torch.Tensor, s_out: torch.Tensor) -> float:
    metrics = OODMetrics()
    labels = torch.cat([torch.zeros(len(s_in)), -torch.ones(len(s_out))]).long()
    metrics.update(torch.cat([s_in, s_out]), labels)
    return metrics.compute()["AUROC"]


def noise_images(n: int, seed: int = 7) -> torch.Tensor:
    return torch.rand((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def fitted(digits, digits_model):
    return A3(digits_model, epochs=3).fit(DataLoader(digits.train, batch_size=128))


def test_layers_are_all_hidden_activations(fitted):
    # digits_cnn: ReLUs at "1", "3" (8x8 maps) and "7" (dense); the output Linear is not tapped
    assert fitted.layer_names == ["1", "3", "7"]
    assert fitted.layer_dims == [16 * 64, 32 * 64, 64]
    assert fitted.input_shape == (1, 8, 8)
    assert [lin.out_features for lin in fitted.alarm.hidden] == [1000, 500, 200, 75]


def test_separates_uniform_noise(fitted, digits):
    x = digits.test.tensors[0]
    assert auroc(fitted.predict(x), fitted.predict(noise_images(300))) > 0.95


@pytest.mark.slow
def test_known_anomalies_are_used_and_help(digits, digits_model):
    x, y = digits.train.tensors
    xt = digits.test.tensors[0]
    known = x[:40].flip(2)  # upside-down digits, labelled as known anomalies
    plain = A3(digits_model, epochs=5).fit(DataLoader(TensorDataset(x, y), batch_size=128))
    semi = A3(digits_model, epochs=5, known_anomalies=True).fit(
        DataLoader(
            TensorDataset(torch.cat([x, known]), torch.cat([y, torch.full((40,), -1)])),
            batch_size=128,
        )
    )
    # held-out upside-down test digits: known anomalies of that kind make them easier to catch
    # (measured 0.79 -> 0.90)
    a_plain = auroc(plain.predict(xt), plain.predict(xt.flip(2)))
    a_semi = auroc(semi.predict(xt), semi.predict(xt.flip(2)))
    assert a_semi > a_plain + 0.05, (a_plain, a_semi)
    # the statistics are computed on normal data only
    assert torch.allclose(plain.mean, semi.mean, atol=1e-5)


@pytest.mark.slow
def test_deterministic_and_seed_dependent(digits, digits_model, fitted):
    loader = DataLoader(digits.train, batch_size=128)
    x = digits.test.tensors[0][:64]
    again = A3(digits_model, epochs=3).fit(loader)
    assert torch.equal(fitted.predict(x), again.predict(x))
    other = A3(digits_model, epochs=3, seed=1).fit(loader)
    assert not torch.allclose(fitted.predict(x), other.predict(x))


def test_shuffling_loader_is_reproducible(digits, digits_model):
    x = digits.test.tensors[0][:32]
    scores = []
    for _ in range(2):
        loader = DataLoader(digits.train, batch_size=128, shuffle=True)
        scores.append(A3(digits_model, epochs=1, hidden=[32]).fit(loader).predict(x))
    assert torch.equal(scores[0], scores[1])


@pytest.mark.slow
def test_structured_api_matches_raw_api(digits, digits_model, fitted):
    x, y = digits.train.tensors
    taps = LayerTaps(digits_model, fitted.layer_names, reduce=lambda t: t.flatten(1))
    with torch.no_grad():
        _, acts = taps(x)
        _, acts_test = taps(digits.test.tensors[0])
    det = A3(digits_model, epochs=3).fit_structured(acts, y, input_shape=(1, 8, 8))
    xt = digits.test.tensors[0]
    assert torch.allclose(det.predict_structured(acts_test), det.predict(xt), atol=1e-5)
    assert torch.allclose(det.predict(xt), fitted.predict(xt), atol=1e-3)
    with pytest.raises(ValueError, match="input_shape"):
        A3(digits_model, epochs=1).fit_structured(acts, y)
    with pytest.raises(ValueError, match="sizes"):
        fitted.predict_structured([a[:4] for a in acts_test[:2]])
    with pytest.raises(TypeError, match="list"):
        fitted.predict_structured(torch.cat(acts_test, 1))


@pytest.mark.slow
def test_vae_counter_examples(digits, digits_model):
    x, y = digits.train.tensors
    loader = DataLoader(digits.train, batch_size=128)
    det = A3(digits_model, epochs=3, anomaly="vae").fit(loader)  # the default vae_epochs
    assert det.vae is not None and det.vae.bounded
    xt = digits.test.tensors[0]
    assert auroc(det.predict(xt), det.predict(noise_images(300))) > 0.9
    again = A3(digits_model, epochs=3, anomaly="vae").fit(loader)
    assert torch.equal(det.predict(xt[:16]), again.predict(xt[:16]))
    with pytest.raises(ValueError, match="inputs"):
        A3(digits_model, anomaly="vae").fit_structured([torch.zeros(4, 3)], y[:4])


def test_state_round_trip(fitted, digits, digits_model):
    buf = io.BytesIO()
    torch.save(fitted.state_dict(), buf)
    buf.seek(0)
    restored = A3(digits_model).load_state_dict(torch.load(buf, weights_only=True))
    x = digits.test.tensors[0][:64]
    assert torch.equal(fitted.predict(x), restored.predict(x))
    assert restored.layer_names == fitted.layer_names


def test_state_of_another_model_is_refused(fitted):
    wider = nn.Sequential(*digits_cnn())
    wider[6] = nn.Linear(32 * 16, 80)
    wider[8] = nn.Linear(80, 10)
    with pytest.raises(ValueError, match="sizes"):
        A3(wider).load_state_dict(fitted.state_dict())
    with pytest.raises(ValueError, match="format"):
        A3(wider).load_state_dict({"alarm": {}})


def test_errors(digits, digits_model):
    x, y = digits.train.tensors
    det = A3(digits_model, epochs=1, hidden=[16])
    with pytest.raises(RequiresFittingException):
        det.predict(x[:4])
    with pytest.raises(RequiresFittingException):
        det.state_dict()
    with pytest.raises(ValueError, match="non-empty"):
        det.fit(DataLoader(TensorDataset(x[:0], y[:0]), batch_size=4))
    bad = x[:64].clone()
    bad[5, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        det.fit(DataLoader(TensorDataset(bad, y[:64]), batch_size=32))
    with pytest.raises(ValueError, match="normal samples"):
        det.fit(DataLoader(TensorDataset(x[:8], torch.full((8,), -1)), batch_size=4))
    with pytest.raises(ValueError, match="below 10"):
        det.fit(DataLoader(TensorDataset(x[:8], torch.full((8,), 12)), batch_size=4))
    with pytest.raises(TypeError, match=r"\(x, y\)"):
        det.fit([x[:4]])
    det.fit(DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32))
    with pytest.raises(ValueError, match=r"shape \(B, 1, 8, 8\)"):
        det.predict(torch.rand(4, 1, 28, 28))
    with pytest.raises(ValueError, match="finite"):
        det.predict(torch.full((2, 1, 8, 8), float("inf")))
    assert det.predict(x[:0]).shape == (0,)
    for kwargs in (
        {"anomaly": "uniform"},
        {"hidden": []},
        {"epochs": 0},
        {"lr": 0.0},
        {"vae_epochs": -1},
    ):
        with pytest.raises(ValueError, match="expected"):
            A3(digits_model, **kwargs)
    with pytest.raises(ValueError, match="does not exist"):
        A3(digits_model, layers=["no_such_layer"])
    with pytest.raises(TypeError, match="Module"):
        A3("not a model")


def test_reused_activation_module_is_refused(digits):
    relu = nn.ReLU()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), relu, nn.Linear(32, 32), relu)
    model = nn.Sequential(model, nn.Linear(32, 10)).eval()
    with pytest.raises(ValueError, match="runs 2 times"):
        A3(model, epochs=1).fit(DataLoader(digits.train, batch_size=256))


def test_functional_activations_need_layers(digits):
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(64, 32)
            self.fc2 = nn.Linear(32, 10)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    model = Functional().eval()
    loader = DataLoader(digits.train, batch_size=256)
    with pytest.raises(ValueError, match="layers="):
        A3(model, epochs=1).fit(loader)
    det = A3(model, layers=["fc2:input"], epochs=1).fit(loader)
    assert det.layer_dims == [32]
    assert [lin.out_features for lin in det.alarm.hidden] == default_hidden(32)


def test_output_activation_is_excluded_and_modes_restored(digits):
    # an autoencoder-like target ending in a sigmoid: the output activation is not hidden
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 64), nn.Sigmoid()
    )
    model.eval()
    model[3].train()  # mixed modes must come back as they were
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = digits.train.tensors[0]
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=256)
    det = A3(model, epochs=1).fit(loader)
    assert det.layer_names == ["2"]
    det.predict(x[:4])
    assert [m.training for m in model] == [False, False, False, True, False, False]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_metadata():
    assert A3.requires_fit
    assert A3.info.paper.venue == "ECML-PKDD" and A3.info.paper.year == 2020
    assert A3.info.paper.code == "https://github.com/Fraunhofer-AISEC/A3"
    assert A3.info.ai_coded
    from pytorch_ood.detector import A3 as Registered

    assert Registered is A3


def test_state_restores_the_fitted_layers(digits_model, digits):
    """A state loads with the layers it was fitted on, whatever the new instance was given."""
    loader = DataLoader(digits.train, batch_size=128)
    probe = A3(digits_model, epochs=1).fit(loader)
    first, last = probe.layer_names[0], probe.layer_names[-1]
    det = A3(digits_model, layers=[first], epochs=1).fit(loader)
    other = A3(digits_model, layers=[last]).load_state_dict(det.state_dict())
    assert other.layer_names == [first]
    x = digits.test.tensors[0][:32]
    assert torch.equal(det(x), other(x))


def test_num_classes_and_extract(fitted, digits):
    x = digits.test.tensors[0][:4]
    assert fitted.num_classes == 10
    (acts,) = fitted.extract(x)
    assert [a.shape[1] for a in acts] == fitted.layer_dims
    assert torch.allclose(fitted.predict_structured(acts), fitted(x), atol=1e-5)
